package attest

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzParseEvidence: any submitted document either parses into exactly one
// format's part, or is refused with an error; none passes verification
// against a nonce it was not made for, and nothing panics.
func FuzzParseEvidence(f *testing.F) {
	f.Add([]byte(`{"format":"tpm2-quote","nonce":"00","tpm2":{"quote":"AA==","signature":"AA==","pcrs":{"sha256":{"16":"00"}}}}`))
	f.Add([]byte(`{"format":"eat","nonce":"","eat":{"token":"oA=="}}`))
	f.Add([]byte(`{"format":"dice","dice":{"chain":["AA=="],"signature":"AA=="}}`))
	f.Add([]byte(`{"format":"tpm2-quote","tpm2":{},"dice":{}}`))
	nonce := make([]byte, NonceSize)
	pol := Policy{Class: "c", Formats: []string{"tpm2-quote", "dice", "eat"}, PCRs: []int{16}}
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := ParseEvidence(raw)
		if err != nil {
			return
		}
		n := 0
		for _, set := range []bool{ev.TPM2 != nil, ev.DICE != nil, ev.EAT != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("parsed evidence carries %d parts", n)
		}
		if _, err := json.Marshal(ev); err != nil {
			t.Fatal(err)
		}
		if r := Verify(raw, ev, Enrolled{}, pol, nonce, time.Unix(0, 0)); r.Passed() {
			t.Fatalf("fuzzed evidence passed: %s", raw)
		}
	})
}
