package attestrpc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os/exec"
	"sort"
	"time"

	"github.com/vigil-iot/vigil/attest"
)

// Reattester keeps a gateway's devices attested: for each device it asks a
// member for a nonce, runs EvidenceCmd to get the device's evidence for it,
// and submits the evidence, again every Every (spread with jitter, so that a
// city's devices do not attest in the same second), and before the
// attestation the member recorded runs out (its class's maxAge).
type Reattester struct {
	Client *Client
	// EvidenceCmd is run as EvidenceCmd[0] with EvidenceCmd[1:] followed
	// by the device name and the nonce (64 hex digits); it prints the
	// evidence JSON document on standard output.
	EvidenceCmd []string
	// Devices lists the gateway's devices; it is asked every pass.
	Devices func(context.Context) ([]string, error)
	// Every is the time between two attestations of a device (default 12h).
	Every time.Duration
	// CmdTimeout bounds one run of EvidenceCmd (default 30s).
	CmdTimeout time.Duration
	Logger     *slog.Logger

	now  func() time.Time     // time.Now unless a test sets it
	next map[string]time.Time // when each device attests next; owned by Run
}

// retryAfter is how long a device waits after a failed attempt.
func (r *Reattester) retryAfter() time.Duration { return min(r.Every/10, time.Minute) }

// Run attests until ctx ends.
func (r *Reattester) Run(ctx context.Context) error {
	if len(r.EvidenceCmd) == 0 || r.Client == nil || r.Devices == nil {
		return errors.New("reattester: a client, an evidence command and a device list are required")
	}
	if r.Every <= 0 {
		r.Every = 12 * time.Hour
	}
	if r.CmdTimeout <= 0 {
		r.CmdTimeout = 30 * time.Second
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	if r.now == nil {
		r.now = time.Now
	}
	r.next = map[string]time.Time{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		r.pass(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// pass attests every device that is due, one at a time (a gateway's TPMs
// and devices are slow; parallelism buys nothing but load).
func (r *Reattester) pass(ctx context.Context) {
	devices, err := r.Devices(ctx)
	if err != nil {
		r.Logger.Warn("reattester: cannot list the devices", "err", err)
		return
	}
	now := r.now()
	seen := map[string]bool{}
	var due []string
	for _, d := range devices {
		seen[d] = true
		next, ok := r.next[d]
		if !ok {
			// First sight: attest soon, spread over the first tenth of
			// the interval (at most a minute).
			next = now.Add(time.Duration(rand.Int64N(int64(r.retryAfter()) + 1)))
			r.next[d] = next
		}
		if !now.Before(next) {
			due = append(due, d)
		}
	}
	for d := range r.next {
		if !seen[d] {
			delete(r.next, d)
		}
	}
	sort.Strings(due)
	for _, d := range due {
		if ctx.Err() != nil {
			return
		}
		expires, err := r.attest(ctx, d)
		if err != nil {
			r.Logger.Warn("reattester: attestation did not pass", "device", d, "err", err)
			r.next[d] = r.now().Add(r.retryAfter())
			continue
		}
		r.next[d] = r.nextAfter(r.now(), expires)
	}
}

// nextAfter is when a device attested now, whose attestation expires at
// expires, attests again: after 80 to 100% of Every, and in any case when
// 70 to 90% of its validity has passed, so that it re-attests before its
// class's maxAge runs out, and devices drift apart.
func (r *Reattester) nextAfter(now, expires time.Time) time.Time {
	next := now.Add(r.Every - time.Duration(rand.Int64N(int64(r.Every)/5+1)))
	if left := expires.Sub(now); left > 0 {
		early := now.Add(left*7/10 + time.Duration(rand.Int64N(int64(left)/5+1)))
		if early.Before(next) {
			next = early
		}
	}
	return next
}

// AttestOnce attests one device now: challenge, evidence, submission. It
// returns an error unless the evidence passed.
func (r *Reattester) AttestOnce(ctx context.Context, device string) error {
	_, err := r.attest(ctx, device)
	return err
}

// attest is AttestOnce, returning when the attestation expires.
func (r *Reattester) attest(ctx context.Context, device string) (time.Time, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	ch, err := r.Client.Challenge(cctx, device)
	cancel()
	if err != nil {
		return time.Time{}, fmt.Errorf("challenge: %w", err)
	}
	evidence, err := r.evidence(ctx, device, ch.Nonce)
	if err != nil {
		return time.Time{}, err
	}
	cctx, cancel = context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	resp, err := r.Client.Attest(cctx, device, evidence)
	if err != nil {
		return time.Time{}, fmt.Errorf("attest: %w", err)
	}
	if a := resp.Attestation; a == nil || a.Failed() {
		var why []string
		if a != nil {
			why = a.Reasons
		}
		return time.Time{}, fmt.Errorf("evidence failed: %v", why)
	}
	r.Logger.Info("device attested", "device", device, "firmware", resp.Attestation.FirmwareVersion,
		"expires", resp.Attestation.ExpiresAt.Format(time.RFC3339))
	return resp.Attestation.ExpiresAt, nil
}

// evidence runs the evidence command for device and nonce.
func (r *Reattester) evidence(ctx context.Context, device, nonce string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, r.CmdTimeout)
	defer cancel()
	args := append(append([]string(nil), r.EvidenceCmd[1:]...), device, nonce)
	cmd := exec.CommandContext(ctx, r.EvidenceCmd[0], args...)
	var out, errOut limitedBuffer
	out.limit, errOut.limit = attest.MaxEvidenceBytes, 4096
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("evidence command: %w: %s", err, bytes.TrimSpace(errOut.Bytes()))
	}
	if out.over {
		return nil, fmt.Errorf("evidence command printed more than %d bytes", attest.MaxEvidenceBytes)
	}
	return out.Bytes(), nil
}

// limitedBuffer keeps at most limit bytes and notes that more came.
type limitedBuffer struct {
	bytes.Buffer
	limit int
	over  bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if room := b.limit - b.Len(); len(p) > room {
		b.over = true
		p = p[:max(room, 0)]
	}
	b.Buffer.Write(p)
	return n, nil // the rest is dropped, not an error for the command
}
