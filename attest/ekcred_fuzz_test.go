package attest

import (
	"bytes"
	"os"
	"testing"
	"time"
)

// FuzzEKEnrollmentParsers: the parsers of what a device sends to enroll by
// EK (its AK's public area, its EK certificates, the credential file, the
// enrollment id) never panic, and a public area that parses marshals back
// to bytes that parse to the same name.
func FuzzEKEnrollmentParsers(f *testing.F) {
	for _, name := range []string{"ak-ecc.pub", "ak-rsa.pub", "ek-rsa.der", "ek-ecc384.der", "tpm2-tools.cred", "unrestricted.pub"} {
		if b, err := os.ReadFile("testdata/ek/" + name); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte{0, 0})
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := ParseTPMPublic(b); err == nil {
			q, err := ParseTPMPublic(p.Marshal())
			if err != nil {
				t.Fatalf("a parsed public area does not parse again: %v", err)
			}
			if !bytes.Equal(p.Name(), q.Name()) {
				t.Fatal("the name changed through marshalling")
			}
			p.CheckAK()
			p.PublicKey()
		}
		if certs, err := ParseEKCertificates(b); err == nil {
			for _, c := range certs {
				EKCertificatePublicKey(c)
			}
		}
		ParseTPM2ToolsCredential(b)
		if _, err := OpenEKTicket(key, "d", string(b), now); err == nil {
			t.Fatal("a fuzzed id opened")
		}
	})
}
