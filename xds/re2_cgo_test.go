//go:build re2

package xds

import (
	"fmt"
	"strings"
	"testing"

	"github.com/vigil-iot/vigil/xds/internal/re2size"
)

// TestRE2ProgramSizeSelfCheck makes sure the RE2 shim measures what Envoy
// would: a short alternation is small, an alternation of five SPIFFE IDs
// like the XFCC regex Vigil once emitted is over Envoy's limit, and a bad
// pattern is an error. Without it TestRE2ProgramSize could pass on a shim
// that measures nothing.
func TestRE2ProgramSizeSelfCheck(t *testing.T) {
	small, err := re2size.Measure("^(GET|POST)$")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("^(GET|POST)$: program size %d (reverse %d)", small.Program, small.Reverse)
	if small.Program < 5 || small.Program > 30 {
		t.Errorf("^(GET|POST)$ has program size %d, want 5..30", small.Program)
	}
	var ids []string
	for _, d := range [][2]string{
		{"north", "slc-n1-003"}, {"south", "aq-s2-001"}, {"east", "cam-e1-002"}, {"west", "pump-w1-004"}, {"harbour", "valve-h1-005"},
	} {
		ids = append(ids, fmt.Sprintf(`spiffe://city\.example/zone/%s/device/%s`, d[0], d[1]))
	}
	xfcc := `(^|.*[;,])URI=(` + strings.Join(ids, "|") + `)([;,].*)?$`
	big, err := re2size.Measure(xfcc)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("XFCC alternation of 5 SPIFFE IDs: program size %d (reverse %d)", big.Program, big.Reverse)
	if big.Program <= re2DefaultMaxProgramSize {
		t.Errorf("an XFCC alternation of 5 SPIFFE IDs has program size %d, want > %d", big.Program, re2DefaultMaxProgramSize)
	}
	if one, err := re2size.Measure("a"); err != nil || one.Program >= small.Program {
		t.Errorf(`"a" measures %+v, %v; want smaller than ^(GET|POST)$`, one, err)
	}
	if _, err := re2size.Measure("(unclosed"); err == nil {
		t.Error("(unclosed compiled")
	}
	if _, err := re2size.Measure(`(a)\1`); err == nil {
		t.Error(`a backreference compiled (RE2 has none)`)
	}
}

// TestRE2ProgramSize measures, with RE2 itself, every distinct regex
// Translate emits in the golden and stress cases and fails on one Envoy
// would reject: a program size over the limit (Envoy's default error
// level, 100, unless the matcher sets its own) or a pattern RE2 refuses.
func TestRE2ProgramSize(t *testing.T) {
	found := allTranslationRegexes(t)
	if len(found) == 0 {
		t.Log("no regex emitted")
		return
	}
	for _, g := range distinctRegexes(found) {
		s, err := re2size.Measure(g.Regex)
		switch {
		case err != nil:
			t.Errorf("RE2 rejects %s: %v", g, err)
		case uint64(s.Program) > g.Limit:
			t.Errorf("RE2 program size %d > %d: Envoy would NACK %s", s.Program, g.Limit, g)
		default:
			t.Logf("program size %3d (reverse %3d): %s", s.Program, s.Reverse, g)
		}
	}
}
