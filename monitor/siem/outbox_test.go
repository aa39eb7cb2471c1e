package siem

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func newTestWebhook(t *testing.T, r *httpReceiver) *Webhook {
	t.Helper()
	w, err := NewWebhook(WebhookConfig{URL: r.srv.URL + "/ingest", Hostname: "vigil-1", Version: "1.4.0", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestOutboxOutageAndRestart: a webhook that is down, an outbox restarted
// meanwhile, a webhook that fails now and then: every alert arrives, in
// order, with no gap; what was acknowledged is not sent again after a
// restart, and delivered segments are deleted.
func TestOutboxOutageAndRestart(t *testing.T) {
	r := newHTTPReceiver(t)
	r.down.Store(true)
	dir := t.TempDir()
	var logs logBuffer
	open := func() *Outbox {
		opts := fastOptions(logs.logger())
		opts.BatchSize = 7
		opts.MaxBytes, opts.SegmentBytes = 1<<20, 4<<10 // many segments
		o, err := Open(dir, []Sink{newTestWebhook(t, r)}, opts)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}

	o := open()
	stop := running(t, o)
	for i := range 100 {
		if err := o.Enqueue(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "failed attempts", func() bool { return r.requests.Load() >= 3 })
	st := o.Stats().Sinks[0]
	if st.Queued != 100 || st.Delivered != 0 || st.LastError == "" || !strings.Contains(st.LastError, "503") {
		t.Errorf("while down: %+v", st)
	}
	stop()
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if err := o.Enqueue(numbered(0)); !errors.Is(err, ErrClosed) {
		t.Errorf("Enqueue after Close: %v, want ErrClosed", err)
	}

	// Restarted, still down for a while, then up but failing every few
	// requests while more alerts come in from several goroutines' turns.
	o = open()
	stop = running(t, o)
	for i := 100; i < 150; i++ {
		if err := o.Enqueue(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	r.down.Store(false)
	flap := make(chan struct{})
	go func() {
		defer close(flap)
		for i := range 20 {
			r.down.Store(i%2 == 0)
			time.Sleep(3 * time.Millisecond)
		}
		r.down.Store(false)
	}()
	for i := 150; i < 300; i++ {
		if err := o.Enqueue(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	<-flap
	eventually(t, "all 300 alerts", func() bool { return len(r.ocsfIDs(t)) >= 300 && o.Stats().Sinks[0].Queued == 0 })
	checkOrder(t, r.ocsfIDs(t), 0, 300)
	st = o.Stats().Sinks[0]
	if st.Delivered != 200+100 || st.Dropped != 0 || st.Rejected != 0 || !st.FailingSince.IsZero() {
		t.Errorf("after recovery: %+v", st)
	}
	stop()
	o.Close()

	// Everything was acknowledged: a third run sends nothing again, and
	// only the empty segment being appended to is left.
	before := len(r.ocsfIDs(t))
	o = open()
	defer o.Close()
	running(t, o)
	if err := o.Enqueue(numbered(300)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "alert 300", func() bool { return len(r.ocsfIDs(t)) == before+1 })
	if ids := r.ocsfIDs(t); ids[len(ids)-1] != numbered(300).ID {
		t.Errorf("last alert received %s", ids[len(ids)-1])
	}
	eventually(t, "delivered segments deleted", func() bool { return o.Stats().Segments == 1 })
	if segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log")); len(segs) != 1 {
		t.Errorf("segment files left: %v", segs)
	}
}

// TestOutboxSinksIndependent: one sink down does not hold up another, and
// a sink added later starts with the next alert.
func TestOutboxSinksIndependent(t *testing.T) {
	dir := t.TempDir()
	up, down := &memSink{name: "up"}, &memSink{name: "down"}
	down.fail.Store(true)
	o, err := Open(dir, []Sink{up, down}, fastOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	stop := running(t, o)
	for i := range 20 {
		if err := o.Enqueue(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the live sink", func() bool { return len(up.alerts()) == 20 })
	if n := len(down.alerts()); n != 0 {
		t.Fatalf("failing sink got %d", n)
	}
	stop()
	o.Close()

	late := &memSink{name: "late"}
	down.fail.Store(false)
	o, err = Open(dir, []Sink{up, down, late}, fastOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	running(t, o)
	if err := o.Enqueue(numbered(20)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "all sinks", func() bool {
		return len(up.alerts()) == 21 && len(down.alerts()) == 21 && len(late.alerts()) == 1
	})
	checkOrder(t, down.ids(), 0, 21)
	checkOrder(t, late.ids(), 20, 21)
}

// TestOutboxTornTail: a record cut short by a crash, or with a bad
// checksum, is truncated (and logged) at the next open; the records before
// it are delivered and the sequence goes on.
func TestOutboxTornTail(t *testing.T) {
	for _, tc := range []struct {
		name    string
		damage  func(t *testing.T, path string)
		survive int
	}{
		{"torn write", func(t *testing.T, path string) {
			rec := appendRecord(nil, 11, []byte(`{"kind":"finding","id":"a-00010"}`))
			appendFile(t, path, rec[:len(rec)/2])
		}, 10},
		{"header only", func(t *testing.T, path string) {
			appendFile(t, path, appendRecord(nil, 11, []byte(`{}`))[:recHeader-3])
		}, 10},
		{"bad checksum", func(t *testing.T, path string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)-2] ^= 0x40
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, 9},
		{"garbage", func(t *testing.T, path string) {
			appendFile(t, path, []byte("\x00\x00\x10\x00garbage that is no record"))
		}, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sink := &memSink{name: "mem"}
			o, err := Open(dir, []Sink{sink}, fastOptions(nil))
			if err != nil {
				t.Fatal(err)
			}
			for i := range 10 {
				if err := o.Enqueue(numbered(i)); err != nil {
					t.Fatal(err)
				}
			}
			o.Close()
			path := filepath.Join(dir, segName(1))
			tc.damage(t, path)

			var logs logBuffer
			o, err = Open(dir, []Sink{sink}, fastOptions(logs.logger()))
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			if !strings.Contains(logs.String(), "torn or corrupt tail") {
				t.Errorf("want the truncation logged, got:\n%s", logs.String())
			}
			running(t, o)
			for i := 10; i < 15; i++ {
				if err := o.Enqueue(numbered(i)); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, "the alerts", func() bool { return len(sink.alerts()) == tc.survive+5 })
			got := sink.ids()
			checkOrder(t, got[:tc.survive], 0, tc.survive)
			checkOrder(t, got[tc.survive:], 10, 15)
			if st := o.Stats().Sinks[0]; st.Dropped != 0 || st.Rejected != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func appendFile(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

// TestOutboxDiskBound: with the sink down, the outbox stays within
// MaxBytes by dropping its oldest records, counts them, never blocks
// Enqueue, and delivers the rest in order once the sink is back.
func TestOutboxDiskBound(t *testing.T) {
	dir := t.TempDir()
	sink := &memSink{name: "mem"}
	sink.fail.Store(true)
	var logs logBuffer
	opts := fastOptions(logs.logger())
	opts.MaxBytes, opts.SegmentBytes = 64<<10, 8<<10
	o, err := Open(dir, []Sink{sink}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	running(t, o)
	const n = 1000
	for i := range n {
		a := numbered(i)
		a.Message = strings.Repeat("m", 300)
		if err := o.Enqueue(a); err != nil {
			t.Fatal(err)
		}
		if st := o.Stats(); st.Bytes > opts.MaxBytes {
			t.Fatalf("after %d alerts the outbox holds %d bytes, more than %d", i+1, st.Bytes, opts.MaxBytes)
		}
	}
	if size := dirSize(t, dir); size > opts.MaxBytes {
		t.Errorf("segment files hold %d bytes, more than %d", size, opts.MaxBytes)
	}
	if !strings.Contains(logs.String(), "full; dropped the oldest segment") {
		t.Errorf("want the drop logged:\n%s", logs.String())
	}
	sink.fail.Store(false)
	eventually(t, "delivery of what is left", func() bool { return o.Stats().Sinks[0].Queued == 0 })
	st := o.Stats().Sinks[0]
	got := sink.ids()
	if st.Dropped == 0 || st.Delivered+st.Dropped != n || uint64(len(got)) != st.Delivered {
		t.Fatalf("delivered %d + dropped %d, want %d in all (received %d)", st.Delivered, st.Dropped, n, len(got))
	}
	// In order, and the newest alerts all there.
	nums := make([]int, len(got))
	for i, id := range got {
		nums[i] = numberOf(t, id)
	}
	for i := 1; i < len(nums); i++ {
		if nums[i] <= nums[i-1] {
			t.Fatalf("out of order or repeated: %v", nums)
		}
	}
	tail := n - 50
	checkOrder(t, got[len(got)-50:], tail, n)
}

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, s := range segs {
		fi, err := os.Stat(s)
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	return total
}

// TestOutboxPoison: a receiver that refuses two alerts as malformed (400)
// gets all the others, in order; the two are counted and skipped.
func TestOutboxPoison(t *testing.T) {
	r := newHTTPReceiver(t)
	var logs logBuffer
	opts := fastOptions(logs.logger())
	opts.BatchSize = 10
	o, err := Open(t.TempDir(), []Sink{newTestWebhook(t, r)}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	poison := map[int]bool{5: true, 17: true}
	for i := range 30 {
		a := numbered(i)
		if poison[i] {
			a.Message = "poison"
		}
		if err := o.Enqueue(a); err != nil {
			t.Fatal(err)
		}
	}
	running(t, o)
	eventually(t, "delivery", func() bool { return o.Stats().Sinks[0].Queued == 0 })
	st := o.Stats().Sinks[0]
	if st.Rejected != 2 || st.Delivered != 28 || !strings.Contains(st.LastError, "400") {
		t.Errorf("stats %+v", st)
	}
	var want []string
	for i := range 30 {
		if !poison[i] {
			want = append(want, numbered(i).ID)
		}
	}
	if got := r.ocsfIDs(t); !slices.Equal(got, want) {
		t.Errorf("received %v\nwant %v", got, want)
	}
	if n := strings.Count(logs.String(), "receiver refused an alert"); n != 2 {
		t.Errorf("want 2 refusals logged, got %d:\n%s", n, logs.String())
	}
}

// TestOutboxConcurrentEnqueue: many goroutines enqueue at once (sharing
// syncs); each one's alerts arrive in its own order, all of them.
func TestOutboxConcurrentEnqueue(t *testing.T) {
	sink := &memSink{name: "mem"}
	opts := fastOptions(nil)
	opts.MaxBytes, opts.SegmentBytes = 4<<20, 16<<10
	o, err := Open(t.TempDir(), []Sink{sink}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	running(t, o)
	const writers, each = 8, 100
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if err := o.Enqueue(Alert{Kind: KindFinding, ID: fmt.Sprintf("w%d-%d", w, i), Severity: SeverityLow}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	eventually(t, "all alerts", func() bool { return len(sink.alerts()) == writers*each })
	next := make(map[string]int)
	for _, id := range sink.ids() {
		w, i, _ := strings.Cut(id, "-")
		if fmt.Sprint(next[w]) != i {
			t.Fatalf("%s arrived while %s-%d was expected", id, w, next[w])
		}
		next[w]++
	}
}

func TestOutboxEnqueueBatch(t *testing.T) {
	sink := &memSink{name: "mem"}
	o, err := Open(t.TempDir(), []Sink{sink}, fastOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	var batch []Alert
	for i := range 50 {
		batch = append(batch, numbered(i))
	}
	bad := append(slices.Clone(batch[:3]), Alert{Kind: KindFinding})
	if err := o.EnqueueBatch(bad); !errors.Is(err, ErrInvalidAlert) {
		t.Fatalf("a batch with an invalid alert: %v", err)
	}
	if q := o.Stats().Sinks[0].Queued; q != 0 {
		t.Fatalf("an invalid batch stored %d alerts", q)
	}
	if err := o.EnqueueBatch(batch); err != nil {
		t.Fatal(err)
	}
	running(t, o)
	eventually(t, "the batch", func() bool { return len(sink.alerts()) == 50 })
	checkOrder(t, sink.ids(), 0, 50)
}

func TestOutboxOpenErrors(t *testing.T) {
	dir := t.TempDir()
	a, b := &memSink{name: "same"}, &memSink{name: "same"}
	if _, err := Open(dir, []Sink{a, b}, Options{}); err == nil {
		t.Error("two sinks with one name: want an error")
	}
	if _, err := Open(dir, []Sink{&memSink{name: "Bad/Name"}}, Options{}); err == nil {
		t.Error("a sink name with a slash: want an error")
	}
	if _, err := Open(dir, []Sink{a}, Options{MaxBytes: 1000}); err == nil {
		t.Error("MaxBytes 1000: want an error")
	}
	o, err := Open(dir, []Sink{a}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if _, err := Open(dir, []Sink{a}, Options{}); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Errorf("a second open of the same directory: %v, want it locked", err)
	}
	if err := o.Enqueue(Alert{Kind: "warning", ID: "x"}); !errors.Is(err, ErrInvalidAlert) {
		t.Errorf("bad kind: %v", err)
	}
	if err := o.Enqueue(Alert{Kind: KindFinding, ID: "x", Message: strings.Repeat("x", maxPayload)}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge alert: %v", err)
	}
	running(t, o)
	eventually(t, "Run to start", o.running.Load)
	if err := o.Run(context.Background()); err == nil {
		t.Error("a second Run: want an error")
	}
}

// TestOutboxWithoutSinks stores nothing.
func TestOutboxWithoutSinks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	o, err := NewFromConfig(dir, Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.Enabled() {
		t.Error("enabled without sinks")
	}
	if err := o.Enqueue(sampleFinding()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the outbox directory was created: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := o.Run(ctx); err != nil {
		t.Fatal(err)
	}
	o.Close()
}

// TestOutboxCorruptAck: a damaged acknowledgement file means redelivering
// what is kept (at least once), not skipping it.
func TestOutboxCorruptAck(t *testing.T) {
	dir := t.TempDir()
	sink := &memSink{name: "mem"}
	sink.fail.Store(true)
	o, err := Open(dir, []Sink{sink}, fastOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := o.Enqueue(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	o.Close()
	if err := os.WriteFile(filepath.Join(dir, "ack-mem.pos"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs logBuffer
	sink.fail.Store(false)
	o, err = Open(dir, []Sink{sink}, fastOptions(logs.logger()))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	running(t, o)
	eventually(t, "redelivery", func() bool { return len(sink.alerts()) == 5 })
	checkOrder(t, sink.ids(), 0, 5)
	if !strings.Contains(logs.String(), "acknowledgement file corrupt") {
		t.Errorf("want the corrupt file logged:\n%s", logs.String())
	}
}

func TestBackoff(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: 10 * time.Second}
	var last time.Duration
	for i := range 12 {
		d := b.next()
		if d < 90*time.Millisecond || d > 11*time.Second {
			t.Fatalf("attempt %d: %v out of range", i, d)
		}
		last = d
	}
	if last < 9*time.Second {
		t.Errorf("the backoff did not reach its cap: %v", last)
	}
	b.reset()
	if d := b.next(); d > 110*time.Millisecond {
		t.Errorf("after reset: %v", d)
	}
}
