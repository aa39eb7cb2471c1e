package node

import (
	"time"
)

// The member's wall clock.
//
// Config.Clock is the time this member decides and records with: the
// authorizer's now (attestation expiry, rate limits, decision times), its
// attestation service's (the nonces it issues and the expiry it checks,
// the verification time of a result), its writes (a quarantine's since,
// risk and incident times, decision-log checkpoints), the monitor's
// windows and the SPIRE reconciler's judgement of unused join tokens.
// What the replicated state machine applies never reads a clock: the
// times are in the log entries, from the member that proposed them, so
// every replica applies the same state whatever its clock. Raft's own
// timers (heartbeats, elections, leases) run on the monotonic clock and
// never read Config.Clock.
//
// OffsetClock shifts it, for fault tests (vigil serve
// --debug-clock-offset): a member whose clock is far ahead or behind.

// OffsetClock is the host's wall clock shifted by d. The times it returns
// carry no monotonic reading, so that they compare as wall-clock times
// with the times other members wrote into the replicated state.
func OffsetClock(d time.Duration) func() time.Time {
	if d == 0 {
		return time.Now
	}
	return func() time.Time { return time.Now().Add(d).Round(0) }
}

// clockOffset is how far cfg.Clock is from the host's clock, rounded to
// the second (0 for the host's clock).
func clockOffset(cfg *Config) time.Duration {
	return cfg.Clock().Sub(time.Now().Round(0)).Round(time.Second)
}

// warnClock says, at start, that this member's clock is shifted.
func (n *Node) warnClock() {
	if d := clockOffset(&n.cfg); d != 0 {
		n.cfg.Logger.Warn("this member's wall clock is shifted from the host's (--debug-clock-offset): for fault tests only", "offset", d)
	}
}
