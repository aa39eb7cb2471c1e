package topology

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestDecodeRejects covers what strict decoding refuses. Every error wraps
// ErrSyntax (never ErrInvalid) and, where the input has a place to point
// at, names its line.
func TestDecodeRejects(t *testing.T) {
	tests := []struct {
		name string
		in   string
		msg  string // part of the message
		line int    // 0: no line expected
	}{
		{"empty", "", "empty document", 0},
		{"white space only", " \n\t\n", "empty document", 0},
		{"comment only", "# nothing here\n", "empty document", 0},

		// YAML
		{"yaml unknown top-level field", "apiVersion: vigil/v1\nkind: Topology\n", "field kind not found in type topology.Document", 2},
		{"yaml unknown nested field", "apiVersion: vigil/v1\ndevices:\n  - name: a\n    klass: b\n", "field klass not found in type topology.Device", 4},
		{"yaml field in wrong case", "apiVersion: vigil/v1\nTrustDomain: a\n", "field TrustDomain not found", 2},
		{"yaml duplicate key", "apiVersion: vigil/v1\ntrustDomain: a\napiVersion: vigil/v1\n", `mapping key "apiVersion" already defined at line 1`, 3},
		{"yaml duplicate key in flow mapping", "zones: [{name: a}, {name: b, name: c}]\n", `mapping key "name" already defined`, 1},
		{"yaml duplicate label", "zones:\n  - name: a\n    labels: {x: \"1\", x: \"2\"}\n", `mapping key "x" already defined`, 3},
		{"yaml two documents", "apiVersion: vigil/v1\n---\napiVersion: vigil/v1\n", "only one document is allowed per file", 2},
		{"yaml empty second document", "apiVersion: vigil/v1\n---\n", "only one document is allowed per file", 2},
		{"yaml bad second document", "apiVersion: vigil/v1\n---\nzones: [\n", "did not find expected node content", 3},
		{"yaml tab indentation", "apiVersion: vigil/v1\nzones:\n\t- name: a\n", "found character that cannot start any token", 3},
		{"yaml unterminated string", "apiVersion: vigil/v1\ntrustDomain: \"city\n", "unexpected end of stream", 2},
		{"yaml bad indentation", "apiVersion: vigil/v1\nzones:\n  - name: a\n   bad\n", "did not find expected", 2},
		{"yaml wrong type", "apiVersion: vigil/v1\nzones: 5\n", "cannot unmarshal !!int `5` into []topology.Zone", 2},
		{"yaml list at top level", "- a\n- b\n", "cannot unmarshal !!seq into topology.Document", 1},
		{"yaml unknown anchor", "zones:\n  - *z\n", "unknown anchor 'z' referenced", 0},

		// JSON
		{"json unknown field", "{\n  \"apiVersion\": \"vigil/v1\",\n  \"kind\": \"Topology\"\n}", `unknown field "kind" in Document`, 3},
		{"json unknown nested field", "{\"devices\": [\n {\"name\": \"a\",\n  \"klass\": \"b\"}]}", `unknown field "klass" in Device`, 3},
		{"json field in wrong case", "{\"apiVersion\": \"vigil/v1\",\n \"TrustDomain\": \"a\"}", `unknown field "TrustDomain"`, 2},
		{"json field in upper case", "{\"APIVERSION\": \"vigil/v1\"}", `unknown field "APIVERSION"`, 1},
		{"json duplicate key", "{\"apiVersion\": \"vigil/v0\",\n\"apiVersion\": \"vigil/v1\"}", `duplicate key "apiVersion"`, 2},
		{"json duplicate label", "{\"zones\": [{\"name\": \"a\",\n \"labels\": {\"x\": \"1\",\n  \"x\": \"2\"}}]}", `duplicate key "x"`, 3},
		{"json syntax error", "{\"apiVersion\": \"vigil/v1\",\n,}", "invalid character ','", 2},
		{"json truncated", "{\"apiVersion\":\n\"vigil/v1\",", "unexpected end of the document", 2},
		{"json wrong type", "{\"apiVersion\": \"vigil/v1\",\n \"zones\": \"north\"}", "zones: cannot use a JSON string here", 2},
		{"json wrong nested type", "{\"zones\": [\n {\"name\": 7}]}", "zones.name: cannot use a JSON number here", 2},
		{"json second document", "{\"apiVersion\": \"vigil/v1\"}\n{}", "unexpected data after the document", 2},
		{"json stray closing brace", "{\"apiVersion\": \"vigil/v1\"}\n\n}", "unexpected data after the document", 3},
		{"json stray closing bracket", "{\"apiVersion\": \"vigil/v1\"}]", "unexpected data after the document", 1},
		{"json lines count leading blank lines", "\n\n{\"apiVersion\": \"vigil/v1\",\n\"kind\": 1}", `unknown field "kind"`, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc, err := Decode([]byte(tt.in))
			if err == nil {
				t.Fatalf("Decode(%q) = %+v, want an error containing %q", tt.in, doc, tt.msg)
			}
			if doc != nil {
				t.Errorf("Decode returned a document along with %v", err)
			}
			if !errors.Is(err, ErrSyntax) || errors.Is(err, ErrInvalid) {
				t.Errorf("error %v: want it to wrap ErrSyntax and not ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q\n  want it to contain %q", err, tt.msg)
			}
			if tt.line > 0 {
				if want := fmt.Sprintf("line %d: ", tt.line); !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\n  want it to name %q", err, want)
				}
			}
			// Load reports the same decoding error.
			if _, lerr := Load([]byte(tt.in)); lerr == nil || lerr.Error() != err.Error() {
				t.Errorf("Load error = %v, want %v", lerr, err)
			}
		})
	}
}

// TestDecodeForms checks that the YAML and JSON forms of one document decode
// to the same value, whatever their layout.
func TestDecodeForms(t *testing.T) {
	want := validDoc()
	yamlForm, err := yaml.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	jsonForm, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	indented, err := json.MarshalIndent(want, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"yaml", yamlForm},
		{"yaml with document markers", append(append([]byte("---\n"), yamlForm...), "...\n"...)},
		{"yaml with comments", append([]byte("# the fixture\n"), yamlForm...)},
		{"json", jsonForm},
		{"json indented with tabs", indented},
		{"json with surrounding white space", append(append([]byte("\n  \n"), jsonForm...), "\n\n"...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.in)
			if err != nil {
				t.Fatalf("Decode: %v\ninput:\n%s", err, tt.in)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Decode:\n  got:  %+v\n  want: %+v", got, want)
			}
		})
	}
}

// TestDecodeYAMLFeatures covers YAML conveniences that must keep working.
func TestDecodeYAMLFeatures(t *testing.T) {
	const src = `apiVersion: vigil/v1
trustDomain: city.example
zones:
  - &north {name: north, labels: {district: 7}}
deviceClasses:
  - name: light
    attestation:
      maxAge: 24h
      firmware:
        - {version: 2.4, sha256: 87576034ab229baee8834c07ea4de31c0167a5c14a6ae4e26d62fad1b48944a0}
`
	doc, err := Decode([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := doc.Zones[0].Labels["district"]; got != "7" {
		t.Errorf("label read from a YAML int = %q, want %q", got, "7")
	}
	if got := doc.DeviceClasses[0].Attestation.Firmware[0].Version; got != "2.4" {
		t.Errorf("version read from a YAML float = %q, want %q", got, "2.4")
	}
}

// TestDecodeChecksSyntaxOnly: a well-formed but meaningless document decodes;
// only NewIndex (or Load) rejects it.
func TestDecodeChecksSyntaxOnly(t *testing.T) {
	const src = "apiVersion: vigil/v9\ndevices: [{name: Bad Name, class: nope}]\n"
	if _, err := Decode([]byte(src)); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	_, err := Load([]byte(src))
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Load: %v, want ErrInvalid", err)
	}
}

// TestLoadSmartCityBothForms checks the example in YAML and in JSON.
func TestLoadSmartCityBothForms(t *testing.T) {
	src := smartCity(t)
	doc, err := Decode(src)
	if err != nil {
		t.Fatal(err)
	}
	jsonForm, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	fromYAML, err := Load(src)
	if err != nil {
		t.Fatalf("Load(yaml): %v", err)
	}
	fromJSON, err := Load(jsonForm)
	if err != nil {
		t.Fatalf("Load(json): %v", err)
	}
	if !reflect.DeepEqual(fromYAML.Document(), fromJSON.Document()) {
		t.Error("the YAML and JSON forms of the example decode differently")
	}
}
