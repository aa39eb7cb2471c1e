package topology

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	tests := []struct {
		in        string
		want      Rate
		perSecond float64
		wantErr   string
	}{
		{in: "1/s", want: Rate{1, time.Second}, perSecond: 1},
		{in: "60/m", want: Rate{60, time.Minute}, perSecond: 1},
		{in: "30/m", want: Rate{30, time.Minute}, perSecond: 0.5},
		{in: "3600/h", want: Rate{3600, time.Hour}, perSecond: 1},
		{in: "1000000000/s", want: Rate{1_000_000_000, time.Second}, perSecond: 1e9},
		{in: "", wantErr: "must look like N/s, N/m or N/h"},
		{in: "60", wantErr: "must look like"},
		{in: "/m", wantErr: "whole number"},
		{in: "0/m", wantErr: "whole number from 1"},
		{in: "-1/m", wantErr: "whole number from 1"},
		{in: "1000000001/s", wantErr: "to 1000000000"},
		{in: "1.5/s", wantErr: "whole number"},
		{in: "ten/s", wantErr: "whole number"},
		{in: " 10/s", wantErr: "whole number"},
		{in: "10/d", wantErr: `has unit "d"`},
		{in: "10/M", wantErr: `has unit "M"`},
		{in: "10/min", wantErr: `has unit "min"`},
		{in: "10/", wantErr: `has unit ""`},
		{in: "10/s/s", wantErr: `has unit "s/s"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRate(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRate(%q) = %v, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseRate(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			if got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
			if got.PerSecond() != tt.perSecond {
				t.Errorf("PerSecond() = %v, want %v", got.PerSecond(), tt.perSecond)
			}
			if got.IsZero() {
				t.Error("IsZero() = true for a parsed rate")
			}
		})
	}
}

func TestRateZero(t *testing.T) {
	var r Rate
	if !r.IsZero() || r.String() != "" || r.PerSecond() != 0 {
		t.Errorf("zero Rate: IsZero %v, String %q, PerSecond %v; want true, \"\", 0", r.IsZero(), r.String(), r.PerSecond())
	}
}

func TestParseMaxAge(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration // 0: an error is expected
	}{
		{"90s", 90 * time.Second},
		{"24h", 24 * time.Hour},
		{"12h", 12 * time.Hour},
		{"1h30m", 90 * time.Minute},
		{"500ms", 500 * time.Millisecond},
		{"1d", 24 * time.Hour},
		{"7d", 7 * 24 * time.Hour},
		{"3650d", 3650 * 24 * time.Hour},
		{"", 0},
		{"0s", 0},
		{"0", 0},
		{"-1h", 0},
		{"soon", 0},
		{"24", 0},
		{"0d", 0},
		{"-2d", 0},
		{"3651d", 0},
		{"d", 0},
		{"1.5d", 0},
		{"7D", 0},
		{"1d12h", 0},
		{"9999999999h", 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseMaxAge(tt.in)
			if tt.want == 0 {
				if err == nil {
					t.Fatalf("ParseMaxAge(%q) = %v, want an error", tt.in, got)
				}
				if !strings.Contains(err.Error(), "must be positive, like 90s, 24h or 7d") {
					t.Errorf("error %q does not explain the form", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseMaxAge(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseLearning(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0s", 0, true},
		{"0", 0, true},
		{"0d", 0, true},
		{"90m", 90 * time.Minute, true},
		{"1h30m", 90 * time.Minute, true},
		{"7d", 7 * 24 * time.Hour, true},
		{"3650d", 3650 * 24 * time.Hour, true},
		{"87600h", 3650 * 24 * time.Hour, true},
		{"", 0, false},
		{"-1s", 0, false},
		{"-1d", 0, false},
		{"3651d", 0, false},
		{"87601h", 0, false},
		{"soon", 0, false},
		{"24", 0, false},
		{"1.5d", 0, false},
		{"7D", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseLearning(tt.in)
			if !tt.ok {
				if err == nil {
					t.Fatalf("ParseLearning(%q) = %v, want an error", tt.in, got)
				}
				if !strings.Contains(err.Error(), "must be zero or positive, like 0s, 12h or 7d (at most 3650d)") {
					t.Errorf("error %q does not explain the form", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseLearning(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestIsName(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"a", true},
		{"0", true},
		{"north", true},
		{"gw-north-1", true},
		{"slc-n1-001", true},
		{"1st", true},
		{"a--b", true},
		{strings.Repeat("a", 63), true},
		{"", false},
		{strings.Repeat("a", 64), false},
		{"-a", false},
		{"a-", false},
		{"North", false},
		{"a_b", false},
		{"a.b", false},
		{"a b", false},
		{"a/b", false},
		{"zöne", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := IsName(tt.in); got != tt.want {
				t.Errorf("IsName(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestPathMatch(t *testing.T) {
	tests := []struct {
		name  string
		spec  string
		want  PathMatch
		match map[string]bool // request path → allowed
	}{
		{"exact", "/api/v1/telemetry", PathMatch{Value: "/api/v1/telemetry"}, map[string]bool{
			"/api/v1/telemetry":  true,
			"/api/v1/telemetry/": false,
			"/api/v1/telemetryx": false,
			"/api/v1":            false,
			"/API/v1/telemetry":  false,
		}},
		{"prefix", "/upload/*", PathMatch{Value: "/upload/", Prefix: true}, map[string]bool{
			"/upload/":        true,
			"/upload/cam/1":   true,
			"/upload":         false,
			"/uploads/x":      false,
			"/other/upload/x": false,
		}},
		{"bare prefix", "/up*", PathMatch{Value: "/up", Prefix: true}, map[string]bool{
			"/up":      true,
			"/upload/": true,
			"/u":       false,
		}},
		{"root prefix", "/*", PathMatch{Value: "/", Prefix: true}, map[string]bool{
			"/":        true,
			"/any/one": true,
			"":         false,
		}},
		{"root", "/", PathMatch{Value: "/"}, map[string]bool{
			"/":  true,
			"/a": false,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePath(tt.spec)
			if err != nil || got != tt.want {
				t.Fatalf("parsePath(%q) = %+v, %v; want %+v", tt.spec, got, err, tt.want)
			}
			for p, want := range tt.match {
				if got.Matches(p) != want {
					t.Errorf("%+v.Matches(%q) = %v, want %v", got, p, !want, want)
				}
			}
		})
	}
}

func TestParsePathRejects(t *testing.T) {
	for _, p := range []string{
		"", "api", "*", "/a*b", "/a/**", "/*/x", "//", "/a//b", "/a/../b", "/..", "/a/..",
		"/./a", "/a/.", "/a?b=1", "/a#b", "/a b", "/a\tb", "/a\nb",
	} {
		t.Run(p, func(t *testing.T) {
			if got, err := parsePath(p); err == nil {
				t.Errorf("parsePath(%q) = %+v, want an error", p, got)
			}
		})
	}
}

func TestValueHelpers(t *testing.T) {
	tests := []struct {
		name string
		fn   func(string) bool
		in   string
		want bool
	}{
		{"host", isHost, "telemetry.city.example", true},
		{"host single label", isHost, "localhost", true},
		{"host upper case", isHost, "Telemetry.city.example", false},
		{"host trailing dot", isHost, "telemetry.city.example.", false},
		{"host with port", isHost, "telemetry:443", false},
		{"host empty", isHost, "", false},
		{"host too long", isHost, strings.Repeat("a.", 127) + "aa", false},
		{"trust domain", isTrustDomain, "city.example", true},
		{"trust domain underscore", isTrustDomain, "my_org.example", true},
		{"trust domain upper case", isTrustDomain, "City.example", false},
		{"trust domain slash", isTrustDomain, "city.example/x", false},
		{"trust domain empty", isTrustDomain, "", false},
		{"sha256", isSHA256Hex, testSHA, true},
		{"sha256 upper case", isSHA256Hex, strings.ToUpper(testSHA), false},
		{"sha256 too long", isSHA256Hex, testSHA + "0", false},
		{"sha256 with prefix", isSHA256Hex, "sha256:" + testSHA[7:], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.fn(tt.in); got != tt.want {
				t.Errorf("%s(%q) = %v, want %v", tt.name, tt.in, got, tt.want)
			}
		})
	}
}

func TestCheckEndpoint(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{"127.0.0.1:8443", ""},
		{"[::1]:8443", ""},
		{"telemetry.internal:1", ""},
		{"telemetry.internal:65535", ""},
		{"127.0.0.1", "must be host:port"},
		{":8443", "invalid host"},
		{"Telemetry:8443", "invalid host"},
		{"127.0.0.1:0", "invalid port"},
		{"127.0.0.1:65536", "invalid port"},
		{"127.0.0.1:-1", "invalid port"},
		{"127.0.0.1:https", "invalid port"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			err := checkEndpoint(tt.in)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("checkEndpoint(%q) = %v, want nil", tt.in, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("checkEndpoint(%q) = %v, want an error containing %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestKind(t *testing.T) {
	for _, k := range []Kind{KindDevice, KindGateway, KindService} {
		parsed, err := ParseKind(k.String())
		if err != nil || parsed != k {
			t.Errorf("ParseKind(%q) = %v, %v; want %v", k.String(), parsed, err, k)
		}
	}
	if got := Kind(9).String(); got != "kind(9)" {
		t.Errorf("Kind(9).String() = %q", got)
	}
	for _, s := range []string{"", "Device", "operator", "node"} {
		if k, err := ParseKind(s); err == nil {
			t.Errorf("ParseKind(%q) = %v, want an error", s, k)
		}
	}

	// Subjects travel as JSON in commands and API answers.
	in := GatewaySubject("gw-north-1")
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"kind":"gateway","name":"gw-north-1"}`; string(data) != want {
		t.Errorf("json.Marshal(%v) = %s, want %s", in, data, want)
	}
	var out Subject
	if err := json.Unmarshal(data, &out); err != nil || out != in {
		t.Errorf("json round trip = %v, %v; want %v", out, err, in)
	}
	if err := json.Unmarshal([]byte(`{"kind":"robot","name":"x"}`), &out); err == nil {
		t.Error("unmarshalling kind \"robot\" succeeded")
	}
	if got := DeviceSubject("slc-1").String(); got != "device/slc-1" {
		t.Errorf("String() = %q, want device/slc-1", got)
	}
}

func TestPathProblem(t *testing.T) {
	for _, tc := range []struct{ path, want string }{
		{"/", ""},
		{"/api/v1/telemetry", ""},
		{"/firmware/", ""},
		{"/a%41b/é", ""},
		{"/pkg.Service/Method", ""},
		{"", "does not start with /"},
		{"*", "does not start with /"},
		{"/a/../b", `has a ".." segment`},
		{"/a/..", `has a ".." segment`},
		{"/./a", `has a "." segment`},
		{"/a//b", "empty segment"},
		{"//", "empty segment"},
		{"/a%2e%2e/b", `encoded "."`},
		{"/a%2Fb", `encoded "/"`},
		{"/a%5Cb", `encoded "\\"`},
		{"/a%25b", `encoded "%"`},
		{"/a%2", "invalid percent-encoding"},
		{"/a%g0", "invalid percent-encoding"},
		{"/a\\b", "backslash"},
		{"/a b", "control character or space"},
		{"/a\x00", "control character or space"},
		{"/a\x7f", "control character or space"},
	} {
		got := PathProblem(tc.path)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("PathProblem(%q) = %q, want %q", tc.path, got, tc.want)
		}
	}
}

// TestFlowPathsMustBeNormalised: a flow may not name a path that no
// normalised request can have (the sibling of the authorizer's check).
func TestFlowPathsMustBeNormalised(t *testing.T) {
	for _, p := range []string{"/a/%2e%2e/*", "/a\\b", "/a%2fb", "/a/./b*"} {
		if _, err := parsePath(p); err == nil {
			t.Errorf("parsePath(%q) accepted a path that is not normalised", p)
		}
	}
	if _, err := parsePath("/cache/*"); err != nil {
		t.Errorf("parsePath(/cache/*): %v", err)
	}
}
