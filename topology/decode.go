package topology

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// ErrSyntax marks a document that could not be decoded at all: malformed
// YAML or JSON, an unknown field, a duplicate key, or more than one document.
var ErrSyntax = errors.New("topology document cannot be decoded")

// Decode reads a vigil/v1 document from YAML or JSON (JSON is recognised by
// its leading '{'). Decoding is strict: unknown fields, duplicate keys and
// trailing documents are errors. Decode checks syntax only; NewIndex checks
// meaning, and Load does both and attaches line numbers.
func Decode(data []byte) (*Document, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("%w: empty document", ErrSyntax)
	}
	var doc Document
	if trimmed[0] == '{' {
		if err := decodeJSON(data, &doc); err != nil {
			return nil, err
		}
		return &doc, nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty document", ErrSyntax)
		}
		return nil, fmt.Errorf("%w: %s", ErrSyntax, yamlMessage(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, fmt.Errorf("%w: %s", ErrSyntax, yamlMessage(err))
		}
		return nil, fmt.Errorf("%w: line %d: only one document is allowed per file", ErrSyntax, extra.Line)
	}
	return &doc, nil
}

func decodeJSON(data []byte, doc *Document) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(doc)
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("%w: line %d: %s", ErrSyntax, lineOf(data, syn.Offset), syn.Error())
	case errors.As(err, &typ):
		return fmt.Errorf("%w: line %d: %s: cannot use a JSON %s here", ErrSyntax, lineOf(data, typ.Offset), typ.Field, typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: line %d: unexpected end of the document", ErrSyntax, lineOf(data, int64(len(data))))
	}
	// encoding/json matches field names regardless of case, keeps the last
	// of duplicate keys and names an unknown field without its line; hold
	// JSON to the same rules as YAML.
	if kerr := checkJSONKeys(data); kerr != nil {
		return kerr
	}
	if err != nil {
		return fmt.Errorf("%w: %s", ErrSyntax, strings.TrimPrefix(err.Error(), "json: "))
	}
	// Decoder.More does not report a stray '}' or ']' after the document.
	off := dec.InputOffset()
	for off < int64(len(data)) && strings.IndexByte(" \t\r\n", data[off]) >= 0 {
		off++
	}
	if off < int64(len(data)) {
		return fmt.Errorf("%w: line %d: unexpected data after the document", ErrSyntax, lineOf(data, off))
	}
	return nil
}

// checkJSONKeys walks a syntactically valid JSON document alongside the Go
// types it decodes into, and rejects duplicate keys and object keys that are
// not exactly the name of a field.
func checkJSONKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	w := jsonWalker{dec: dec, data: data}
	return w.value(reflect.TypeFor[Document]())
}

type jsonWalker struct {
	dec  *json.Decoder
	data []byte
}

var anyType = reflect.TypeFor[any]()

func (w *jsonWalker) value(t reflect.Type) error {
	tok, err := w.dec.Token()
	if err != nil {
		return fmt.Errorf("%w: %s", ErrSyntax, err)
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch tok {
	case json.Delim('['):
		elem := anyType
		if t.Kind() == reflect.Slice {
			elem = t.Elem()
		}
		for w.dec.More() {
			if err := w.value(elem); err != nil {
				return err
			}
		}
	case json.Delim('{'):
		fields := jsonFields(t)
		seen := make(map[string]bool)
		for w.dec.More() {
			tok, err := w.dec.Token()
			if err != nil {
				return fmt.Errorf("%w: %s", ErrSyntax, err)
			}
			key, _ := tok.(string)
			// Lines are counted only for an error: counting them for every
			// key would make a large document quadratic.
			line := func() int { return lineOf(w.data, w.dec.InputOffset()) }
			if seen[key] {
				return fmt.Errorf("%w: line %d: duplicate key %q", ErrSyntax, line(), key)
			}
			seen[key] = true
			elem := anyType
			switch t.Kind() {
			case reflect.Struct:
				ft, ok := fields[key]
				if !ok {
					return fmt.Errorf("%w: line %d: unknown field %q in %s", ErrSyntax, line(), key, t.Name())
				}
				elem = ft
			case reflect.Map:
				elem = t.Elem()
			}
			if err := w.value(elem); err != nil {
				return err
			}
		}
	default:
		return nil
	}
	if _, err := w.dec.Token(); err != nil { // the closing delimiter
		return fmt.Errorf("%w: %s", ErrSyntax, err)
	}
	return nil
}

var jsonFieldCache sync.Map // reflect.Type → map[string]reflect.Type

// jsonFields maps the JSON names of a struct's fields to their types; nil
// for any other type.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if t.Kind() != reflect.Struct {
		return nil
	}
	if f, ok := jsonFieldCache.Load(t); ok {
		return f.(map[string]reflect.Type)
	}
	fields := make(map[string]reflect.Type, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	jsonFieldCache.Store(t, fields)
	return fields
}

func lineOf(data []byte, offset int64) int {
	if offset > int64(len(data)) {
		offset = int64(len(data))
	}
	return bytes.Count(data[:offset], []byte("\n")) + 1
}

// yamlMessage flattens yaml.v3's multi-line TypeError into one readable line.
func yamlMessage(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return strings.Join(te.Errors, "; ")
	}
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

// Load decodes and validates a document. A *ValidationError it returns
// carries, for each problem, the line of the offending field when the source
// is YAML or JSON that could be traced.
func Load(data []byte) (*Index, error) {
	doc, err := Decode(data)
	if err != nil {
		return nil, err
	}
	ix, err := NewIndex(doc)
	var verr *ValidationError
	if errors.As(err, &verr) {
		lines := lineMap(data)
		for i := range verr.Errors {
			verr.Errors[i].Line = lookupLine(lines, verr.Errors[i].Path)
		}
	}
	return ix, err
}

// lineMap maps field paths such as "devices[3].class" to the line they are
// on. It is only computed when a document is invalid, so valid documents are
// parsed once.
func lineMap(data []byte) map[string]int {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil || len(root.Content) == 0 {
		return nil
	}
	lines := make(map[string]int)
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		if _, seen := lines[path]; !seen {
			lines[path] = n.Line
		}
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				p := n.Content[i].Value
				if path != "" {
					p = path + "." + p
				}
				lines[p] = n.Content[i].Line
				walk(n.Content[i+1], p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, path+"["+strconv.Itoa(i)+"]")
			}
		}
	}
	walk(root.Content[0], "")
	return lines
}

// lookupLine finds the line of path, or of its closest ancestor.
func lookupLine(lines map[string]int, path string) int {
	for p := path; p != ""; {
		if l, ok := lines[p]; ok {
			return l
		}
		cut := strings.LastIndexAny(p, ".[")
		if cut < 0 {
			break
		}
		p = p[:cut]
	}
	return 0
}
