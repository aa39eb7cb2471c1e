package siem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by an outbox that has been closed.
var ErrClosed = errors.New("siem: outbox closed")

// ErrTooLarge is returned by Enqueue for an alert whose JSON is larger than
// a record may be (1 MiB, and a quarter of MaxBytes).
var ErrTooLarge = errors.New("siem: alert too large")

// Defaults of [Options].
const (
	DefaultMaxBytes   = 256 << 20
	DefaultBatchSize  = 100
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 10 * time.Second

	minMaxBytes     = 64 << 10
	minSegmentBytes = 4 << 10
	maxSegmentBytes = 16 << 20
	maxBatchBytes   = 1 << 20
)

// Options tune an outbox; the zero value gives the defaults.
type Options struct {
	// MaxBytes bounds the outbox's files (default 256 MiB, at least
	// 64 KiB). Past it the oldest segment is deleted, delivered or not;
	// what a sink loses that way is counted in its Dropped.
	MaxBytes int64
	// SegmentBytes is the size at which a segment is closed and a new one
	// started (default MaxBytes/16, between 64 KiB and 16 MiB; at least
	// 4 KiB and at most MaxBytes/2). It is the unit in which delivered
	// records are deleted and undelivered ones dropped.
	SegmentBytes int64
	// BatchSize is the most alerts one Deliver call gets (default 100).
	BatchSize int
	// MinBackoff and MaxBackoff bound the wait between attempts while a
	// sink fails (defaults 100 ms and 10 s; it doubles each time).
	MinBackoff, MaxBackoff time.Duration
	// Logger receives the outbox's events (default: discarded).
	Logger *slog.Logger
}

func (opts Options) withDefaults() (Options, error) {
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxBytes < minMaxBytes {
		return opts, fmt.Errorf("siem: MaxBytes %d is below the minimum of %d", opts.MaxBytes, minMaxBytes)
	}
	if opts.SegmentBytes == 0 {
		opts.SegmentBytes = min(opts.MaxBytes/16, maxSegmentBytes)
		opts.SegmentBytes = max(opts.SegmentBytes, min(64<<10, opts.MaxBytes/4))
	}
	if opts.SegmentBytes < minSegmentBytes || opts.SegmentBytes > opts.MaxBytes/2 {
		return opts, fmt.Errorf("siem: SegmentBytes %d is not between %d and MaxBytes/2 (%d)", opts.SegmentBytes, minSegmentBytes, opts.MaxBytes/2)
	}
	if opts.BatchSize == 0 {
		opts.BatchSize = DefaultBatchSize
	}
	if opts.BatchSize < 0 {
		return opts, fmt.Errorf("siem: negative BatchSize %d", opts.BatchSize)
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.MinBackoff < 0 || opts.MaxBackoff < opts.MinBackoff {
		return opts, fmt.Errorf("siem: backoff %v … %v is not a range", opts.MinBackoff, opts.MaxBackoff)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return opts, nil
}

// Outbox is a durable, bounded queue of alerts in a directory, delivered to
// each of its sinks in order and at least once. Enqueue may be called from
// any goroutine; Run delivers; Close ends both.
type Outbox struct {
	dir    string
	opts   Options
	log    *slog.Logger
	sinks  []*sinkState
	lock   *os.File
	maxRec int // the largest payload Enqueue accepts

	// syncMu is held by the goroutine making records durable (a group
	// commit); it is taken before mu, never while holding it.
	syncMu sync.Mutex

	mu       sync.Mutex
	closed   bool
	stopping bool
	segs     []*segment // oldest first; the last is appended to while w is set
	w        *os.File   // the last segment, open for writing
	retired  []*os.File // writers of sealed segments, closed by the next group commit
	total    int64      // bytes in segs
	next     uint64     // the next record's sequence number
	durable  uint64     // every record up to this one is synced
	notify   chan struct{}
	buf      []byte
	stop     chan struct{}
	running  atomic.Bool
	loops    sync.WaitGroup
	closeErr error
	once     sync.Once
}

type segment struct {
	base      uint64 // the sequence number in the file name (of the first record)
	path      string
	size      int64 // bytes written
	committed int64 // bytes synced, which readers may read
	last      uint64
	count     int
}

type sinkState struct {
	sink    Sink
	name    string
	ackPath string

	// Guarded by Outbox.mu.
	acked         uint64 // the first record not delivered (or skipped)
	persisted     uint64 // acked, as last written to the acknowledgement file
	ackFailing    bool
	delivered     uint64
	dropped       uint64
	rejected      uint64
	lastErr       string
	lastErrAt     time.Time
	lastDelivered time.Time
	failingSince  time.Time
}

// SinkStats is what a sink's delivery has done since the outbox opened.
type SinkStats struct {
	Name      string `json:"name"`
	Queued    uint64 `json:"queued"`    // alerts stored and not yet delivered
	Delivered uint64 `json:"delivered"` // alerts the receiver accepted
	// Dropped alerts were deleted undelivered (the outbox was full) or
	// lost to a corrupt file.
	Dropped uint64 `json:"dropped"`
	// Rejected alerts were refused by the receiver as malformed (or could
	// not be decoded) and skipped.
	Rejected      uint64    `json:"rejected"`
	LastError     string    `json:"lastError,omitempty"`
	LastErrorAt   time.Time `json:"lastErrorAt,omitzero"`
	LastDelivered time.Time `json:"lastDelivered,omitzero"`
	// FailingSince is when the current run of failed attempts began (zero
	// while deliveries succeed).
	FailingSince time.Time `json:"failingSince,omitzero"`
}

// Stats describes an outbox.
type Stats struct {
	Bytes    int64       `json:"bytes"` // in segment files
	Segments int         `json:"segments"`
	Sinks    []SinkStats `json:"sinks"`
}

var sinkNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// Open opens (creating it if needed) the outbox in dir for sinks, checks
// and repairs its files (a torn or corrupt tail is truncated and logged),
// and resumes each sink after its last acknowledged record. A sink new to
// the directory starts with the next alert enqueued. With no sinks the
// outbox stores nothing and Enqueue discards.
func Open(dir string, sinks []Sink, opts Options) (*Outbox, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	o := &Outbox{
		dir:    dir,
		opts:   opts,
		log:    opts.Logger,
		maxRec: int(min(maxPayload, opts.MaxBytes/4-recHeader)),
		notify: make(chan struct{}),
		stop:   make(chan struct{}),
	}
	seen := make(map[string]bool)
	for _, s := range sinks {
		name := s.Name()
		if !sinkNameRE.MatchString(name) {
			return nil, fmt.Errorf("siem: sink name %q: want 1–64 of a-z 0-9 . _ -", name)
		}
		if seen[name] {
			return nil, fmt.Errorf("siem: two sinks named %q", name)
		}
		seen[name] = true
		o.sinks = append(o.sinks, &sinkState{sink: s, name: name, ackPath: filepath.Join(dir, ackPrefix+name+ackSuffix)})
	}
	if len(o.sinks) == 0 {
		return o, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("siem: outbox: %w", err)
	}
	if o.lock, err = lockDir(filepath.Join(dir, lockName)); err != nil {
		return nil, fmt.Errorf("siem: outbox: %w", err)
	}
	if err := o.recover(); err != nil {
		o.w.Close()
		o.lock.Close()
		return nil, fmt.Errorf("siem: outbox %s: %w", dir, err)
	}
	return o, nil
}

// recover reads the directory: segments (checked, torn tails truncated),
// acknowledgement files, and starts a new segment to append to.
func (o *Outbox) recover() error {
	entries, err := os.ReadDir(o.dir)
	if err != nil {
		return err
	}
	var bases []uint64
	for _, e := range entries {
		name := e.Name()
		if base, ok := parseSegName(name); ok && e.Type().IsRegular() {
			bases = append(bases, base)
			continue
		}
		if strings.HasSuffix(name, tmpSuffix) {
			os.Remove(filepath.Join(o.dir, name))
			continue
		}
		if sink, ok := strings.CutPrefix(name, ackPrefix); ok && strings.HasSuffix(sink, ackSuffix) {
			sink = strings.TrimSuffix(sink, ackSuffix)
			if !slices.ContainsFunc(o.sinks, func(s *sinkState) bool { return s.name == sink }) {
				o.log.Info("siem outbox: forgetting the position of a sink no longer configured", "sink", sink)
				os.Remove(filepath.Join(o.dir, name))
			}
		}
	}
	slices.Sort(bases)
	var last uint64
	for i, base := range bases {
		seg, err := o.scanSegment(base, last, i == len(bases)-1)
		if err != nil {
			return err
		}
		if seg == nil {
			continue
		}
		if seg.count == 0 {
			if err := os.Remove(seg.path); err != nil {
				return err
			}
			continue
		}
		last = seg.last
		o.segs = append(o.segs, seg)
		o.total += seg.size
	}

	next := last + 1
	oldest := next
	if len(o.segs) > 0 {
		oldest = o.segs[0].base
	}
	var fresh []*sinkState
	for _, s := range o.sinks {
		b, err := os.ReadFile(s.ackPath)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			fresh = append(fresh, s)
			continue
		case err != nil:
			return err
		}
		if s.acked, err = decodeAck(b); err != nil {
			o.log.Error("siem outbox: acknowledgement file corrupt; redelivering everything kept", "sink", s.name, "file", s.ackPath)
			s.acked = oldest
			if err := writeAck(s.ackPath, s.acked); err != nil {
				return err
			}
		}
		s.persisted = s.acked
		next = max(next, s.acked)
	}
	for _, s := range fresh {
		s.acked, s.persisted = next, next
		if err := writeAck(s.ackPath, next); err != nil {
			return err
		}
	}
	o.next, o.durable = next, next-1
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.newSegmentLocked(); err != nil {
		return err
	}
	if err := o.enforceBoundLocked(0); err != nil {
		return err
	}
	o.gcLocked()
	return nil
}

// scanSegment checks the segment whose first record is base, truncating it
// at the first record that is cut short, corrupt or out of order. It
// returns nil for a file that is not a segment (which it removes).
func (o *Outbox) scanSegment(base, prev uint64, newest bool) (*segment, error) {
	path := filepath.Join(o.dir, segName(base))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	magic := make([]byte, len(segMagic))
	if n, _ := f.ReadAt(magic, 0); n < len(magic) || string(magic) != segMagic {
		if size <= int64(len(segMagic)) && newest {
			o.log.Info("siem outbox: removing a segment cut short at creation", "file", path, "bytes", size)
		} else {
			o.log.Error("siem outbox: not a segment (bad header); removing it", "file", path, "bytes", size)
		}
		return nil, os.Remove(path)
	}
	seg := &segment{base: base, path: path}
	r := segReader{r: f}
	off := int64(len(segMagic))
	for off < size {
		seq, _, next, err := r.record(off, size)
		if err == nil && (seq < base || seq <= prev || seq > maxSeq) {
			err = fmt.Errorf("%w: sequence number %d out of order", errCorrupt, seq)
		}
		if err != nil {
			if !errors.Is(err, errShort) && !errors.Is(err, errCorrupt) {
				return nil, fmt.Errorf("read %s: %w", path, err)
			}
			level := slog.LevelWarn
			if !newest || errors.Is(err, errCorrupt) {
				level = slog.LevelError
			}
			o.log.Log(context.Background(), level, "siem outbox: torn or corrupt tail; truncating the segment",
				"file", path, "offset", off, "bytes", size-off, "records_kept", seg.count, "reason", err)
			if err := f.Truncate(off); err != nil {
				return nil, err
			}
			size = off
			break
		}
		seg.count++
		seg.last, prev = seq, seq
		off = next
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	seg.size, seg.committed = size, size
	return seg, nil
}

// Enabled reports whether the outbox has a sink (without one, Enqueue
// discards).
func (o *Outbox) Enabled() bool { return len(o.sinks) > 0 }

// Enqueue stores a for every sink and returns once it is on disk (synced;
// concurrent calls share one sync). It never waits for a sink; when the
// outbox is full the oldest records are dropped to make room. An alert
// without a time is stamped with the current time.
func (o *Outbox) Enqueue(a Alert) error {
	return o.EnqueueBatch([]Alert{a})
}

// EnqueueBatch stores alerts, in order, with one sync: Enqueue for a caller
// with several alerts at hand. An invalid or too large alert fails the call
// before anything is stored; after a write error, the alerts before the
// failed one are stored.
func (o *Outbox) EnqueueBatch(alerts []Alert) error {
	for i := range alerts {
		if err := alerts[i].validate(); err != nil {
			return err
		}
	}
	if len(o.sinks) == 0 || len(alerts) == 0 {
		return nil
	}
	payloads := make([][]byte, len(alerts))
	now := time.Now()
	for i, a := range alerts {
		if a.Time.IsZero() {
			a.Time = now
		}
		p, err := json.Marshal(a)
		if err != nil {
			return fmt.Errorf("siem: encode alert %s: %w", a.ID, err)
		}
		if len(p) > o.maxRec {
			return fmt.Errorf("%w: alert %s is %d bytes of JSON (at most %d)", ErrTooLarge, a.ID, len(p), o.maxRec)
		}
		payloads[i] = p
	}
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return ErrClosed
	}
	var last uint64
	var err error
	for _, p := range payloads {
		var seq uint64
		if seq, err = o.appendLocked(p); err != nil {
			break
		}
		last = seq
	}
	o.mu.Unlock()
	if last != 0 {
		if serr := o.syncThrough(last); err == nil {
			err = serr
		}
	}
	return err
}

// appendLocked writes the record of payload to the last segment (starting a
// new one, or dropping old ones, as needed) and returns its sequence number.
func (o *Outbox) appendLocked(payload []byte) (uint64, error) {
	o.buf = appendRecord(o.buf[:0], o.next, payload)
	need := int64(len(o.buf))
	if o.w == nil {
		if err := o.newSegmentLocked(); err != nil {
			return 0, err
		}
	}
	if act := o.segs[len(o.segs)-1]; act.count > 0 && act.size+need > o.opts.SegmentBytes {
		if err := o.rotateLocked(); err != nil {
			return 0, err
		}
	}
	if err := o.enforceBoundLocked(need); err != nil {
		return 0, err
	}
	act := o.segs[len(o.segs)-1]
	if _, err := o.w.WriteAt(o.buf, act.size); err != nil {
		if terr := o.w.Truncate(act.size); terr != nil {
			// The file may end in a torn record: write no more to it (its
			// readers stop at what was synced; Open truncates the rest).
			o.log.Error("siem outbox: cannot undo a failed write; sealing the segment", "file", act.path, "err", terr)
			if serr := o.sealLocked(); serr != nil {
				o.log.Error("siem outbox: sync", "file", act.path, "err", serr)
			}
		}
		return 0, fmt.Errorf("siem: outbox write: %w", err)
	}
	seq := o.next
	o.next++
	act.size += need
	act.count++
	act.last = seq
	o.total += need
	return seq, nil
}

// syncThrough returns once record seq is synced: it syncs the last segment
// itself unless another goroutine's sync covered seq meanwhile.
func (o *Outbox) syncThrough(seq uint64) error {
	o.syncMu.Lock()
	defer o.syncMu.Unlock()
	o.mu.Lock()
	if o.durable >= seq {
		o.mu.Unlock()
		return nil
	}
	if o.closed || o.w == nil {
		o.mu.Unlock()
		return fmt.Errorf("siem: outbox write: record %d was not synced", seq)
	}
	for _, f := range o.retired {
		f.Close()
	}
	o.retired = nil
	f, seg := o.w, o.segs[len(o.segs)-1]
	target, size := o.next-1, seg.size
	o.mu.Unlock()

	err := f.Sync()

	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		return fmt.Errorf("siem: outbox sync: %w", err)
	}
	seg.committed = max(seg.committed, size)
	if target > o.durable {
		o.durable = target
		o.wakeLocked()
	}
	return nil
}

// wakeLocked tells waiting readers that there is more to read.
func (o *Outbox) wakeLocked() {
	close(o.notify)
	o.notify = make(chan struct{})
}

// sealLocked syncs the last segment and stops appending to it.
func (o *Outbox) sealLocked() error {
	if o.w == nil {
		return nil
	}
	act := o.segs[len(o.segs)-1]
	if err := o.w.Sync(); err != nil {
		return err
	}
	act.committed = act.size
	o.retired = append(o.retired, o.w)
	o.w = nil
	if act.last > o.durable {
		o.durable = act.last
		o.wakeLocked()
	}
	return nil
}

// rotateLocked seals the last segment and starts a new one.
func (o *Outbox) rotateLocked() error {
	if err := o.sealLocked(); err != nil {
		return fmt.Errorf("siem: outbox sync: %w", err)
	}
	return o.newSegmentLocked()
}

// newSegmentLocked starts a segment whose first record will be o.next.
func (o *Outbox) newSegmentLocked() error {
	path := filepath.Join(o.dir, segName(o.next))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("siem: outbox: %w", err)
	}
	_, err = f.Write([]byte(segMagic))
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = syncDir(o.dir)
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("siem: outbox: new segment: %w", err)
	}
	if n := len(o.segs); n > 0 && o.segs[n-1].base == o.next {
		// An empty sealed segment with the same name (its writer failed).
		o.total -= o.segs[n-1].size
		o.segs = o.segs[:n-1]
	}
	size := int64(len(segMagic))
	o.w = f
	o.segs = append(o.segs, &segment{base: o.next, path: path, size: size, committed: size})
	o.total += size
	return nil
}

// enforceBoundLocked drops the oldest segments until need more bytes fit.
func (o *Outbox) enforceBoundLocked(need int64) error {
	for o.total+need > o.opts.MaxBytes {
		if len(o.segs) > 1 {
			o.dropOldestLocked()
			continue
		}
		if len(o.segs) == 1 && o.segs[0].count > 0 {
			if err := o.rotateLocked(); err != nil {
				return err
			}
			continue
		}
		break // one empty segment: a record never exceeds MaxBytes/4
	}
	return nil
}

// dropOldestLocked deletes the oldest segment, delivered or not.
func (o *Outbox) dropOldestLocked() {
	seg := o.segs[0]
	o.segs = o.segs[1:]
	o.total -= seg.size
	if err := os.Remove(seg.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		o.log.Error("siem outbox: cannot delete a dropped segment", "file", seg.path, "err", err)
	}
	attrs := []any{"records", seg.count, "bytes", seg.size, "max_bytes", o.opts.MaxBytes}
	for _, s := range o.sinks {
		if s.acked <= seg.last {
			attrs = append(attrs, "undelivered_"+s.name, seg.last+1-max(s.acked, seg.base))
		}
	}
	o.log.Warn("siem outbox: full; dropped the oldest segment", attrs...)
}

// gcLocked deletes the segments every sink has acknowledged (durably).
func (o *Outbox) gcLocked() {
	if len(o.sinks) == 0 {
		return
	}
	low := o.sinks[0].persisted
	for _, s := range o.sinks[1:] {
		low = min(low, s.persisted)
	}
	for len(o.segs) > 1 {
		seg := o.segs[0]
		if seg.count > 0 && seg.last >= low {
			return
		}
		if err := os.Remove(seg.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			o.log.Error("siem outbox: cannot delete a delivered segment", "file", seg.path, "err", err)
			return
		}
		o.segs = o.segs[1:]
		o.total -= seg.size
	}
}

// Close stops delivery (waiting for the sinks' goroutines to return), syncs
// and closes the files, and closes the sinks that are io.Closers. Enqueue
// fails with ErrClosed afterwards.
func (o *Outbox) Close() error {
	o.once.Do(func() {
		o.mu.Lock()
		o.stopping = true
		o.mu.Unlock()
		close(o.stop)
		o.loops.Wait()

		o.syncMu.Lock()
		defer o.syncMu.Unlock()
		o.mu.Lock()
		defer o.mu.Unlock()
		o.closed = true
		if o.w != nil {
			if err := o.sealLocked(); err != nil {
				o.closeErr = fmt.Errorf("siem: outbox sync: %w", err)
				o.w.Close()
			}
		}
		for _, f := range o.retired {
			f.Close()
		}
		o.retired = nil
		close(o.notify)
		for _, s := range o.sinks {
			if c, ok := s.sink.(io.Closer); ok {
				c.Close()
			}
		}
		if o.lock != nil {
			o.lock.Close()
		}
	})
	return o.closeErr
}

// Stats reports the outbox's size and each sink's counters.
func (o *Outbox) Stats() Stats {
	o.mu.Lock()
	defer o.mu.Unlock()
	st := Stats{Bytes: o.total, Segments: len(o.segs), Sinks: make([]SinkStats, 0, len(o.sinks))}
	for _, s := range o.sinks {
		st.Sinks = append(st.Sinks, SinkStats{
			Name:          s.name,
			Queued:        o.queuedLocked(s),
			Delivered:     s.delivered,
			Dropped:       s.dropped,
			Rejected:      s.rejected,
			LastError:     s.lastErr,
			LastErrorAt:   s.lastErrAt,
			LastDelivered: s.lastDelivered,
			FailingSince:  s.failingSince,
		})
	}
	return st
}

func (o *Outbox) queuedLocked(s *sinkState) uint64 {
	from := s.acked
	if len(o.segs) > 0 {
		from = max(from, o.segs[0].base)
	}
	if o.next > from {
		return o.next - from
	}
	return 0
}
