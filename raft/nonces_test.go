package raft

import (
	"bytes"
	"errors"
	"fmt"
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

// TestANonceIsUsedOnceWhateverTheClocks: a member whose clock is two hours
// ahead records a result; every replica then forgets the nonces that
// expired by that clock, which the other members' clocks still accept.
// Such a nonce is refused (it may have been used), never taken as new; a
// nonce issued afterwards is accepted, until the skewed member's own
// nonces are forgotten too, when the others' are refused (fail closed).
func TestANonceIsUsedOnceWhateverTheClocks(t *testing.T) {
	f := loadedFSM(t)
	idx := f.lastIndex + 1
	at := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	const skew = 2 * time.Hour
	apply := func(ops ...StateOp) error {
		r := f.Apply(entry(t, idx, cmdState, stateBatch{Ops: ops})).(Result)
		idx++
		return r.Err
	}
	nonce := func(c byte) string { return strings.Repeat(string(c), 64) }
	if err := apply(attestOp("dev-00001", nonce('a'), at)); err != nil {
		t.Fatal(err)
	}
	if err := apply(attestOp("dev-00002", nonce('b'), at.Add(skew))); err != nil {
		t.Fatal(err)
	}
	// a's evidence again, ten seconds later by a correct clock: a's nonce
	// is still valid there, and the log no longer holds it.
	replay := attestOp("dev-00001", nonce('a'), at.Add(10*time.Second))
	replay.NonceExpires = at.Add(time.Minute) // the nonce carries its expiry
	err := apply(replay)
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "forgotten") {
		t.Fatalf("a nonce forgotten early, used again: %v; want it rejected", err)
	}
	if err := apply(attestOp("dev-00003", nonce('c'), at.Add(20*time.Second))); err != nil {
		t.Fatalf("a nonce issued after the forgotten ones: %v", err)
	}

	// The skewed member's next result forgets its own first nonce: the
	// others' nonces, expiring before it, are refused from then on.
	if err := apply(attestOp("dev-00002", nonce('d'), at.Add(skew+5*time.Minute))); err != nil {
		t.Fatal(err)
	}
	if err := apply(attestOp("dev-00004", nonce('e'), at.Add(30*time.Second))); !errors.Is(err, ErrRejected) {
		t.Fatalf("a correct clock's nonce after the skewed member's were forgotten: %v; want it rejected", err)
	}

	// A restored replica refuses what the others refuse.
	g := newFSM(quietLogger())
	if err := g.Restore(io.NopCloser(bytes.NewReader(persist(t, f)))); err != nil {
		t.Fatal(err)
	}
	if !g.nonces.forgotten.Equal(f.nonces.forgotten) || !g.nonces.forgot(at.Add(90*time.Second)) {
		t.Fatalf("restored forgotten %v, want %v", g.nonces.forgotten, f.nonces.forgotten)
	}
}

// TestALongLivedNonceDoesNotHoldTheShortOnes: a local quarantine's ID is
// remembered for 30 days; the minute-long attestation nonces used after it
// are still forgotten when they expire (a queue trimmed from its front
// kept them all for 30 days).
func TestALongLivedNonceDoesNotHoldTheShortOnes(t *testing.T) {
	n := newUsedNonces()
	t0 := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	n.use("local", t0.Add(LocalQuarantineTTL), t0)
	for i := range 1000 {
		at := t0.Add(time.Duration(i) * time.Second)
		n.use(fmt.Sprintf("n%04d", i), at.Add(time.Minute), at)
	}
	if len(n.used) > 70 || len(n.queue) > 70 {
		t.Fatalf("%d nonces remembered (%d queued) after 1000 minute-long ones over 1000 s; want about 61", len(n.used), len(n.queue))
	}
	if _, ok := n.used["local"]; !ok {
		t.Fatal("the local quarantine's ID was forgotten early")
	}
}
