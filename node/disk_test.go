package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/api"
)

// testDiskWatch is a watcher of a fake file system whose free space is
// *free.
func testDiskWatch(free *atomic.Uint64) (*diskWatch, *syncBuffer) {
	var out syncBuffer
	d := &diskWatch{dir: "/data", member: "n1", log: slog.New(slog.NewTextHandler(&out, nil)),
		statfs:   func(string) (uint64, uint64, error) { return free.Load(), 100 << 30, nil },
		leads:    func() bool { return false },
		handOver: func() error { return nil },
		kick:     make(chan struct{}, 1)}
	return d, &out
}

func (d *diskWatch) sampleAt(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sample(now)
}

// TestDiskWatchLevels: the data dir is low under 64 MiB free and full
// under 16 MiB; each change is logged once, naming the data dir, and GET
// /v1/node says why.
func TestDiskWatchLevels(t *testing.T) {
	var free atomic.Uint64
	free.Store(10 << 30)
	d, out := testDiskWatch(&free)
	now := time.Now()
	step := func(bytes uint64) map[string]any {
		free.Store(bytes)
		now = now.Add(diskCheckEvery)
		d.sampleAt(now)
		d.sampleAt(now.Add(time.Millisecond)) // the same again logs nothing
		return d.status()
	}
	if st := step(10 << 30); st["full"] != false || st["low"] != false || st["freeBytes"] != uint64(10<<30) || out.String() != "" {
		t.Fatalf("10 GiB free: status %v, log %q", st, out)
	}
	if st := step(40 << 20); st["full"] != false || st["low"] != true {
		t.Fatalf("40 MiB free: status %v", st)
	}
	st := step(1 << 20)
	if st["full"] != true || !strings.Contains(st["reason"].(string), "1.0 MiB free, less than 16.0 MiB") || st["path"] != "/data" {
		t.Fatalf("1 MiB free: status %v", st)
	}
	if err := d.refuse(); err == nil {
		t.Fatal("a full data dir refuses no write")
	} else if e := (*api.Error)(nil); !errors.As(err, &e) || e.Code != api.CodeDiskFull || e.Status != 503 ||
		!strings.Contains(e.Message, "member n1 takes no writes: its data dir /data is full") {
		t.Fatalf("refused with %#v", err)
	}
	if st := step(10 << 30); st["full"] != false || st["low"] != false || d.refuse() != nil {
		t.Fatalf("10 GiB free again: status %v", st)
	}
	log := out.String()
	for _, want := range []string{
		`level=WARN msg="data dir is low on space" data_dir=/data free="40.0 MiB"`,
		`level=ERROR msg="data dir is full: this member takes no writes`,
		`level=INFO msg="data dir has space again`,
	} {
		if strings.Count(log, want) != 1 {
			t.Errorf("the log holds %q %d times, want once:\n%s", want, strings.Count(log, want), log)
		}
	}
	if got := d.status()["refusedWrites"]; got != uint64(1) {
		t.Errorf("refusedWrites = %v, want 1", got)
	}
}

// TestDiskWatchWriteFailure: a write that failed for lack of space makes
// the data dir full at once, whatever statfs said, until a sample taken
// at least diskCheckEvery later finds room.
func TestDiskWatchWriteFailure(t *testing.T) {
	var free atomic.Uint64
	free.Store(10 << 30)
	d, _ := testDiskWatch(&free)
	if d.report(errors.New("raft: some other failure")) || d.status()["full"] != false {
		t.Fatal("an error that is not about space made the data dir full")
	}
	// As raft reports it: the log cache quotes the store's error.
	cause := fmt.Errorf("raft: %w", fmt.Errorf("unable to store logs within log store, err: %q",
		&fs.PathError{Op: "write", Path: "/data/raft.db", Err: syscall.ENOSPC}))
	if !d.report(cause) {
		t.Fatal("ENOSPC, as text, not recognised")
	}
	st := d.status()
	if st["full"] != true || !strings.Contains(st["reason"].(string), "a write failed: raft: unable to store logs") {
		t.Fatalf("status after a failed write: %v", st)
	}
	e := (*api.Error)(nil)
	if err := d.fullError(cause); !errors.As(err, &e) || !strings.Contains(e.Message, "no space left on device") || !strings.Contains(e.Message, "was not applied") {
		t.Fatalf("fullError: %v", err)
	}
	d.sampleAt(time.Now().Add(diskCheckEvery / 2))
	if d.status()["full"] != true {
		t.Fatal("a sample right after the failure cleared it")
	}
	d.sampleAt(time.Now().Add(diskCheckEvery))
	if st := d.status(); st["full"] != false || st["lastError"] == nil {
		t.Fatalf("a later sample with room: status %v", st)
	}
	for _, err := range []error{
		&fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC},
		fmt.Errorf("wrapped: %w", &fs.PathError{Op: "write", Path: "/x", Err: syscall.EDQUOT}),
	} {
		if !noSpace(err) {
			t.Errorf("noSpace(%v) = false", err)
		}
	}
	if noSpace(nil) || noSpace(syscall.EIO) {
		t.Error("noSpace of nil or EIO")
	}
}

// TestDiskWatchHandsOver: while the data dir is full a leading member
// hands its leadership over; a hand-over that fails is logged once and
// tried again; one that succeeded is not repeated at once.
func TestDiskWatchHandsOver(t *testing.T) {
	var free atomic.Uint64
	free.Store(1 << 20)
	d, out := testDiskWatch(&free)
	var leads atomic.Bool
	leads.Store(true)
	var calls atomic.Int32
	d.leads = leads.Load
	d.handOver = func() error {
		if calls.Add(1) < 3 {
			return errors.New("raft: hand the leadership over: no peer caught up")
		}
		leads.Store(false)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.run(ctx) }()
	for range 2 {
		d.wake()
		time.Sleep(20 * time.Millisecond)
	}
	deadline := time.Now().Add(5 * time.Second)
	for leads.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if leads.Load() {
		t.Fatalf("still leading after %d hand-over attempts", calls.Load())
	}
	// Leading again at once (every member's disk may be full): no second
	// hand-over before diskHandOverEvery.
	leads.Store(true)
	d.wake()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("%d hand-over attempts, want 3 (the last one 5s ago at the soonest)", n)
	}
	log := out.String()
	if n := strings.Count(log, "could not be handed over"); n != 1 {
		t.Errorf("the failed hand-over was logged %d times, want once:\n%s", n, log)
	}
	if !strings.Contains(log, "handed the leadership over to another member") {
		t.Errorf("the hand-over was not logged:\n%s", log)
	}
}

// TestDiskFullMakesDecisionsStale: while the data dir is full the member
// can append nothing the cluster commits, so its decisions count as stale
// for as long (and past --max-staleness only essential flows pass).
func TestDiskFullMakesDecisionsStale(t *testing.T) {
	var free atomic.Uint64
	free.Store(10 << 30)
	d, _ := testDiskWatch(&free)
	now := time.Now()
	d.sampleAt(now)
	if got := d.fullFor(now.Add(time.Minute)); got != 0 {
		t.Fatalf("with space, fullFor = %v", got)
	}
	free.Store(1 << 20)
	d.sampleAt(now)
	if got := d.fullFor(now.Add(90 * time.Second)); got != 90*time.Second {
		t.Fatalf("full for 90s: fullFor = %v", got)
	}
	free.Store(10 << 30)
	d.sampleAt(now.Add(2 * time.Minute))
	if got := d.fullFor(now.Add(3 * time.Minute)); got != 0 {
		t.Fatalf("space again: fullFor = %v", got)
	}
}
