package attestrpc

import (
	"testing"
	"time"
)

// TestNextAttestationComesBeforeExpiry: a device re-attests after most of
// Every, but always before its attestation runs out, at 70 to 90% of its
// validity, spread so that devices drift apart.
func TestNextAttestationComesBeforeExpiry(t *testing.T) {
	r := &Reattester{Every: 12 * time.Hour}
	now := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	seen := map[time.Time]bool{}
	for range 100 {
		n := r.nextAfter(now, now.Add(time.Hour)) // maxAge 1h < Every
		if n.Before(now.Add(42*time.Minute)) || n.After(now.Add(54*time.Minute)) {
			t.Fatalf("next = %v after now, want 70-90%% of the hour left", n.Sub(now))
		}
		seen[n] = true
		if n := r.nextAfter(now, now.Add(48*time.Hour)); n.Before(now.Add(9*time.Hour+36*time.Minute)) || n.After(now.Add(12*time.Hour)) {
			t.Fatalf("with a long validity, next = %v after now, want 80-100%% of Every", n.Sub(now))
		}
	}
	if len(seen) < 50 {
		t.Fatalf("only %d distinct times for 100 devices: no jitter", len(seen))
	}
}
