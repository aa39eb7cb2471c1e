package attest

import (
	"crypto/elliptic"
	"encoding/json"
	"fmt"
	"runtime"
	"testing"

	"github.com/veraison/go-cose"
)

// Verifications per second per core, for each evidence format: run with
// `go test -run '^$' -bench Verify -cpu 1 ./attest`. Each iteration is one
// whole verification as a member does it (digest, nonce, signature,
// structure, reference values), of the same good evidence.

func BenchmarkVerify(b *testing.B) {
	b.Logf("hardware: %s/%s, %d CPUs", runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	for _, kind := range []string{"ecdsa", "rsa"} {
		b.Run("tpm2-quote-"+kind, func(b *testing.B) {
			s := tpm2Sim(b, kind)
			tpm2Measure(b, s, 16, tpm2Firmware.SHA256, EventFirmware)
			nonce := tpm2Nonce(b)
			ev, err := s.Evidence(nonce, []int{16})
			if err != nil {
				b.Fatal(err)
			}
			raw, _ := json.Marshal(ev)
			key := Enrolled{AK: s.AKPublic()}
			pol := tpm2Policy()
			b.ResetTimer()
			for b.Loop() {
				if r := Verify(raw, ev, key, pol, nonce, tpm2Now); !r.Passed() {
					b.Fatal(r.Reasons)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
		})
	}
	b.Run("dice-p256", func(b *testing.B) {
		f := newDICEFixture(b, diceOpts{})
		ev := f.evidence(b)
		raw, _ := json.Marshal(ev)
		b.ResetTimer()
		for b.Loop() {
			if r := Verify(raw, ev, Enrolled{}, f.pol, f.nonce, f.now); !r.Passed() {
				b.Fatal(r.Reasons)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
	})
	for _, k := range []struct {
		name string
		alg  cose.Algorithm
	}{{"eat-es256", cose.AlgorithmES256}, {"eat-eddsa", cose.AlgorithmEdDSA}} {
		b.Run(k.name, func(b *testing.B) {
			key := eatEd25519(b)
			if k.alg == cose.AlgorithmES256 {
				key = eatECDSA(b, elliptic.P256())
			}
			f := newEATFixture(b, key, k.alg)
			tok := f.sign(b, f.claims(b), eatToken{})
			ev := &Evidence{Format: "eat", Nonce: fmt.Sprintf("%x", f.nonce), EAT: &EATEvidence{Token: tok}}
			raw, _ := json.Marshal(ev)
			b.ResetTimer()
			for b.Loop() {
				if r := Verify(raw, ev, Enrolled{EATKey: key.Public()}, f.pol, f.nonce, f.now); !r.Passed() {
					b.Fatal(r.Reasons)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
		})
	}
}
