package raft

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

func attestOp(dev, nonce string, at time.Time) StateOp {
	return StateOp{Subject: topology.DeviceSubject(dev), Op: OpSetAttestation, Nonce: nonce, NonceExpires: at.Add(time.Minute),
		Attestation: &topology.Attestation{Status: topology.AttestationPassed, Method: "tpm2-quote", FirmwareVersion: "1.0",
			VerifiedAt: at, ExpiresAt: at.Add(time.Hour)}}
}

// TestANonceIsUsedOnceAcrossTheCluster: evidence for a nonce already
// recorded is refused by every replica as a replay, however the
// result reached the log; expired nonces are forgotten by log time; the
// used set survives a snapshot.
func TestANonceIsUsedOnceAcrossTheCluster(t *testing.T) {
	f := loadedFSM(t)
	idx := f.lastIndex + 1
	at := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	n1, n2 := strings.Repeat("a", 64), strings.Repeat("b", 64)
	apply := func(ops ...StateOp) error {
		r := f.Apply(entry(t, idx, cmdState, stateBatch{Ops: ops})).(Result)
		idx++
		return r.Err
	}
	if err := apply(attestOp("dev-00001", n1, at)); err != nil {
		t.Fatal(err)
	}
	err := apply(attestOp("dev-00001", n1, at.Add(time.Second)))
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "replayed") {
		t.Fatalf("second use of a nonce: %v, want a rejected replay", err)
	}
	if err := apply(attestOp("dev-00002", n2, at), attestOp("dev-00003", n2, at)); err == nil {
		t.Fatal("one nonce used twice in one batch was accepted")
	}
	// The image keeps the used nonce: a restored replica refuses it too.
	g := newFSM(quietLogger())
	if err := g.Restore(io.NopCloser(bytes.NewReader(persist(t, f)))); err != nil {
		t.Fatal(err)
	}
	if _, used := g.nonces.used[n1]; !used {
		t.Fatal("a restored replica forgot a used nonce")
	}
	// Past its expiry (by the entries' time) the nonce is forgotten.
	if err := apply(attestOp("dev-00004", n2, at.Add(2*time.Minute))); err != nil {
		t.Fatal(err)
	}
	if _, used := f.nonces.used[n1]; used {
		t.Fatal("an expired nonce is still remembered")
	}
}
