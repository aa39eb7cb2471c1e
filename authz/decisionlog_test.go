package authz

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func sampleDecision(i int) *Decision {
	return &Decision{
		ID: fmt.Sprintf("d-%d", i), Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Node: "n1", Revision: 7,
		Subject: "spiffe://city.example/zone/north/device/slc-0042", Service: "telemetry",
		Method: "POST", Path: "/api/v1/telemetry?a=1&b=<2>", Allowed: i%2 == 0, HTTPStatus: 200,
		Reason: "allowed by policy", PolicyHash: "abc", LatencyUS: int64(i), Risk: i % 3 * 31,
	}
}

// startDecisionLog opens a log at path and runs its writer; stop ends Run and
// returns its error.
func startDecisionLog(t testing.TB, cfg DecisionLogConfig) (l *DecisionLog, stop func() error) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = discardLogger()
	}
	l, err := OpenDecisionLog(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	return l, func() error { cancel(); return <-done }
}

// writeDecisions writes decisions first..first+n-1 to path in one run.
func writeDecisions(t testing.TB, path string, first, n int) {
	t.Helper()
	l, stop := startDecisionLog(t, DecisionLogConfig{Path: path, Strict: true})
	for i := first; i < first+n; i++ {
		l.Record(sampleDecision(i))
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func verifyLogFile(t *testing.T, path string) VerifyReport {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := VerifyDecisionLog(f)
	if err != nil {
		t.Fatalf("verify %s: %v", path, err)
	}
	return rep
}

func TestDecisionLogRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.log")
	const writers, each = 16, 500
	l, stop := startDecisionLog(t, DecisionLogConfig{Path: path, Strict: true, SyncInterval: 10 * time.Millisecond,
		Denies: DenyBudget{PerSecond: 1, Burst: writers * each}})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				d := sampleDecision(w*each + i)
				l.Record(d)
				d.Reason = "changed after Record" // Record must have copied it
			}
		})
	}
	wg.Wait()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if written, dropped := l.Stats(); written != writers*each || dropped != 0 {
		t.Fatalf("Stats() = %d written, %d dropped; want %d, 0", written, dropped, writers*each)
	}
	rep := verifyLogFile(t, path)
	if rep.Entries != writers*each || rep.Seq != writers*each || len(rep.Restarts) != 0 {
		t.Fatalf("report = %+v", rep)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", st.Mode().Perm())
	}
	seen := map[string]bool{}
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		var got Decision
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		var n int
		fmt.Sscanf(got.ID, "d-%d", &n)
		want := sampleDecision(n)
		if got != *want {
			t.Fatalf("line %d = %+v, want %+v", i+1, got, *want)
		}
		// The risk is recorded as a number, and left out when 0.
		if has := strings.Contains(line, fmt.Sprintf(`,"risk":%d,`, want.Risk)); has != (want.Risk != 0) || (want.Risk == 0 && strings.Contains(line, `"risk"`)) {
			t.Fatalf("line %d records risk %d as: %s", i+1, want.Risk, line)
		}
		seen[got.ID] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("%d distinct decisions, want %d", len(seen), writers*each)
	}
	if !strings.HasPrefix(string(data), `{"seq":1,"prev":"`+zeroChainHash+`","decision_id":"d-`) {
		t.Fatalf("first line: %.120s", data)
	}
}

func TestDecisionLogRestart(t *testing.T) {
	tests := []struct {
		name     string
		tail     string // appended after 3 decisions, as a crash might leave it
		restarts int
	}{
		{name: "clean", tail: ""},
		{name: "half a line", tail: `{"seq":4,"prev":"12ab`, restarts: 1},
		{name: "zero blocks", tail: "\x00\x00\x00\x00\x00\x00\x00\x00", restarts: 1},
		{name: "crash again while writing the marker", tail: "{\"seq\":4,\"pr\n{\"seq\":4,\"prev\":", restarts: 1},
		{name: "whole line without its newline", tail: "<line 3 without newline>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "decisions.log")
			writeDecisions(t, path, 0, 3)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if tt.tail == "<line 3 without newline>" {
				data = data[:len(data)-1]
			} else {
				data = append(data, tt.tail...)
			}
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			writeDecisions(t, path, 3, 2)
			rep := verifyLogFile(t, path)
			if rep.Entries != 5 || len(rep.Restarts) != tt.restarts {
				t.Fatalf("report = %+v, want 5 entries and %d restarts", rep, tt.restarts)
			}
			if tt.restarts > 0 && rep.Restarts[0].TornLine != 4 {
				t.Fatalf("restart = %+v, want torn bytes at line 4", rep.Restarts[0])
			}
			// A third run continues from the second, restart or not.
			writeDecisions(t, path, 5, 1)
			if rep := verifyLogFile(t, path); rep.Entries != 6 {
				t.Fatalf("after a third run: %+v", rep)
			}
		})
	}
}

func TestDecisionLogOpenErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		cfg  DecisionLogConfig
	}{
		{name: "no path", cfg: DecisionLogConfig{}},
		{name: "stdout", cfg: DecisionLogConfig{Path: "-"}},
		{name: "no directory", cfg: DecisionLogConfig{Path: filepath.Join(dir, "missing", "d.log")}},
		{name: "negative buffer", cfg: DecisionLogConfig{Path: filepath.Join(dir, "d.log"), Buffer: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := OpenDecisionLog(tt.cfg); err == nil {
				t.Fatal("OpenDecisionLog succeeded")
			}
		})
	}
}

// returnsWithin fails the test if f does not return within d.
func returnsWithin(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

func TestDecisionLogDrops(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.log")
	var logs bytes.Buffer
	l, err := OpenDecisionLog(DecisionLogConfig{Path: path, Buffer: 4,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	// No writer yet: 4 fit, the rest are dropped, and Record never waits.
	returnsWithin(t, 5*time.Second, "non-strict Record on a full queue", func() {
		for i := range 1000 {
			l.Record(sampleDecision(i))
		}
	})
	if written, dropped := l.Stats(); written != 0 || dropped != 996 {
		t.Fatalf("Stats() = %d, %d; want 0, 996", written, dropped)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if written, _ := l.Stats(); written != 4 {
		t.Fatalf("written = %d, want the 4 queued", written)
	}
	if got := logs.String(); !strings.Contains(got, "dropped=996") || strings.Contains(got, "d-1") {
		t.Fatalf("warning = %q, want the count and no decision content", got)
	}
	if rep := verifyLogFile(t, path); rep.Entries != 4 {
		t.Fatalf("report = %+v", rep)
	}
}

func TestDecisionLogStrictNeverDrops(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.log")
	l, stop := startDecisionLog(t, DecisionLogConfig{Path: path, Buffer: 1, Strict: true})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range 200 {
				l.Record(sampleDecision(i))
			}
		})
	}
	returnsWithin(t, 30*time.Second, "strict Record with a running writer", wg.Wait)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if written, dropped := l.Stats(); written != 1600 || dropped != 0 {
		t.Fatalf("Stats() = %d, %d; want 1600, 0", written, dropped)
	}
	if rep := verifyLogFile(t, path); rep.Entries != 1600 {
		t.Fatalf("report = %+v", rep)
	}
}

func TestDecisionLogRecordAfterRun(t *testing.T) {
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "decisions.log")
			l, stop := startDecisionLog(t, DecisionLogConfig{Path: path, Buffer: 1, Strict: strict})
			l.Record(sampleDecision(0))
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			returnsWithin(t, 5*time.Second, "Record after Run", func() {
				for i := range 10 {
					l.Record(sampleDecision(i))
				}
				l.Record(nil)
			})
			if written, dropped := l.Stats(); written != 1 || dropped != 10 {
				t.Fatalf("Stats() = %d, %d; want 1, 10", written, dropped)
			}
			if err := l.Run(context.Background()); err == nil {
				t.Fatal("a second Run succeeded")
			}
		})
	}
}

// TestDecisionLogWriteError: a log that cannot write (a full disk) does
// not end Run, which would stop the member: it degrades, says so in
// Status, keeps taking (and dropping) decisions without blocking, and
// reports the error when it stops.
func TestDecisionLogWriteError(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	l, err := OpenDecisionLog(DecisionLogConfig{Path: "/dev/full", Buffer: 16, Strict: true, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	l.Record(sampleDecision(0))
	waitFor(t, "the log to degrade", func() bool { return l.Status().Degraded })
	returnsWithin(t, 5*time.Second, "Record on a degraded strict log", func() {
		for i := range 1000 {
			l.Record(sampleDecision(i))
		}
	})
	select {
	case err := <-done:
		t.Fatalf("Run ended while degraded: %v", err)
	case <-time.After(1500 * time.Millisecond): // past a recovery attempt
	}
	st := l.Status()
	if !st.Degraded || st.WriteFailures == 0 || !strings.Contains(st.LastError, "no space left") {
		t.Fatalf("Status() = %+v, want degraded with the write error", st)
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("Run on a full device returned nil at its end")
	}
	if st := l.Status(); st.Written != 0 || st.Dropped != 1001 {
		t.Fatalf("Status() = %+v; want 0 written, 1001 dropped", st)
	}
}

// TestDecisionLogShutdownRace records from many goroutines while Run ends:
// every decision is either written or counted as dropped.
func TestDecisionLogShutdownRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.log")
	l, stop := startDecisionLog(t, DecisionLogConfig{Path: path, Buffer: 64})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range 2000 {
				l.Record(sampleDecision(i))
			}
		})
	}
	time.Sleep(time.Millisecond)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	written, dropped := l.Stats()
	if written+dropped != 16000 {
		t.Fatalf("written %d + dropped %d != 16000", written, dropped)
	}
	if rep := verifyLogFile(t, path); uint64(rep.Entries) != written {
		t.Fatalf("report = %+v, written = %d", rep, written)
	}
}

// BenchmarkRecord measures Record, the authorizer's hot path, with a
// running writer:
//   - queued: calls that find room in the queue (the writer drains it while
//     the timer is stopped every 4096 calls), the cost of a normal Record;
//   - full: every CPU records at once, faster than the writer can write, so
//     most calls take the drop path (see dropped/op);
//   - strict: the same load with Strict, so ns/op is the writer's cost per
//     decision, the most it can sustain.
func BenchmarkRecord(b *testing.B) {
	run := func(b *testing.B, strict bool, record func(b *testing.B, l *DecisionLog, d *Decision)) {
		l, stop := startDecisionLog(b, DecisionLogConfig{Path: filepath.Join(b.TempDir(), "decisions.log"), Strict: strict})
		b.ReportAllocs()
		record(b, l, sampleDecision(1))
		b.StopTimer()
		if err := stop(); err != nil {
			b.Fatal(err)
		}
		written, dropped := l.Stats()
		b.ReportMetric(float64(dropped)/float64(written+dropped), "dropped/op")
	}
	parallel := func(b *testing.B, l *DecisionLog, d *Decision) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.Record(d)
			}
		})
	}
	b.Run("queued", func(b *testing.B) {
		run(b, false, func(b *testing.B, l *DecisionLog, d *Decision) {
			for i := range b.N {
				if i%4096 == 4095 {
					b.StopTimer()
					for len(l.queue) > 0 {
						time.Sleep(50 * time.Microsecond)
					}
					b.StartTimer()
				}
				l.Record(d)
			}
		})
	})
	b.Run("full", func(b *testing.B) { run(b, false, parallel) })
	b.Run("strict", func(b *testing.B) { run(b, true, parallel) })
}
