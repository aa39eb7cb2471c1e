package siem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"time"
)

// Run delivers to every sink, each from its own goroutine, until ctx ends
// or the outbox is closed. It returns nil then.
func (o *Outbox) Run(ctx context.Context) error {
	if !o.running.CompareAndSwap(false, true) {
		return errors.New("siem: outbox already running")
	}
	o.mu.Lock()
	if o.stopping {
		o.mu.Unlock()
		return ErrClosed
	}
	o.loops.Add(len(o.sinks))
	o.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-o.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	var wg sync.WaitGroup
	for _, s := range o.sinks {
		wg.Go(func() {
			defer o.loops.Done()
			o.deliverLoop(ctx, s)
		})
	}
	<-ctx.Done()
	wg.Wait()
	return nil
}

// record is one stored alert.
type record struct {
	seq   uint64
	alert Alert
}

// cursor is a sink's read position.
type cursor struct {
	next uint64 // the next sequence number to read
	f    *os.File
	base uint64 // f's segment
	off  int64  // where in f to read next
	r    segReader
}

func (c *cursor) reset() {
	if c.f != nil {
		c.f.Close()
	}
	c.f, c.base, c.off, c.r = nil, 0, 0, segReader{}
}

// deliverLoop delivers to one sink until ctx ends.
func (o *Outbox) deliverLoop(ctx context.Context, s *sinkState) {
	o.mu.Lock()
	cur := cursor{next: s.acked}
	o.mu.Unlock()
	defer cur.reset()
	bo := backoff{min: o.opts.MinBackoff, max: o.opts.MaxBackoff}
	var batch []record
	var alerts []Alert
	for ctx.Err() == nil {
		var err error
		batch, err = o.readBatch(ctx, s, &cur, batch[:0])
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, ErrClosed) {
				return
			}
			o.noteFailure(s, fmt.Errorf("read the outbox: %w", err))
			cur.reset()
			if !sleep(ctx, bo.next()) {
				return
			}
			continue
		}
		if len(batch) > 0 {
			alerts = alerts[:0]
			for _, r := range batch {
				alerts = append(alerts, r.alert)
			}
			if !o.deliver(ctx, s, batch, alerts, &bo) {
				return
			}
		}
		o.ack(s, cur.next)
	}
}

// readBatch returns the next records for the sink from cur, waiting until
// there are some. It may return none after skipping undecodable ones.
func (o *Outbox) readBatch(ctx context.Context, s *sinkState, cur *cursor, batch []record) ([]record, error) {
	for {
		o.mu.Lock()
		if o.closed {
			o.mu.Unlock()
			return nil, ErrClosed
		}
		if len(o.segs) > 0 && cur.next < o.segs[0].base {
			o.droppedLocked(s, o.segs[0].base-cur.next, "outbox full")
			cur.next = o.segs[0].base
			cur.reset()
		}
		if cur.next > o.durable || len(o.segs) == 0 {
			wait := o.notify
			o.mu.Unlock()
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-wait:
			}
			continue
		}
		i := sort.Search(len(o.segs), func(i int) bool { return o.segs[i].base > cur.next }) - 1
		seg := o.segs[i]
		limit, path := seg.committed, seg.path
		var nextBase uint64
		if i < len(o.segs)-1 {
			nextBase = o.segs[i+1].base
		}
		wait := o.notify
		o.mu.Unlock()

		if cur.f == nil || cur.base != seg.base {
			cur.reset()
			f, err := os.Open(path)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue // dropped meanwhile
				}
				return nil, err
			}
			cur.f, cur.base, cur.off, cur.r = f, seg.base, int64(len(segMagic)), segReader{r: f}
		}
		skipped := false
		bytes := 0
		for cur.off < limit && len(batch) < o.opts.BatchSize && bytes < maxBatchBytes {
			seq, payload, next, err := cur.r.record(cur.off, limit)
			if err != nil {
				if !errors.Is(err, errShort) && !errors.Is(err, errCorrupt) {
					return nil, fmt.Errorf("read %s: %w", path, err)
				}
				o.log.Error("siem outbox: corrupt record; skipping the rest of the segment", "sink", s.name, "file", path, "offset", cur.off, "err", err)
				limit = cur.off
				break
			}
			cur.off = next
			if seq < cur.next {
				continue
			}
			if seq > cur.next {
				o.mu.Lock()
				o.droppedLocked(s, seq-cur.next, "records missing from the outbox")
				o.mu.Unlock()
			}
			cur.next = seq + 1
			var a Alert
			if err := json.Unmarshal(payload, &a); err != nil {
				o.mu.Lock()
				s.rejected++
				o.mu.Unlock()
				o.log.Error("siem outbox: undecodable record skipped", "sink", s.name, "seq", seq, "err", err)
				skipped = true
				continue
			}
			batch = append(batch, record{seq: seq, alert: a})
			bytes += len(payload)
		}
		if len(batch) > 0 || skipped {
			return batch, nil
		}
		if cur.off >= limit && nextBase != 0 {
			// The end of a sealed segment: on to the next one.
			if cur.next < nextBase {
				o.mu.Lock()
				o.droppedLocked(s, nextBase-cur.next, "records missing from the outbox")
				o.mu.Unlock()
				cur.next = nextBase
			}
			cur.reset()
			continue
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-wait:
		}
	}
}

func (o *Outbox) droppedLocked(s *sinkState, n uint64, why string) {
	s.dropped += n
	o.log.Warn("siem: alerts lost before delivery", "sink", s.name, "alerts", n, "reason", why)
}

// deliver sends batch (whose alerts are alerts) to the sink until it has
// them or refused them; it returns false if ctx ended first.
func (o *Outbox) deliver(ctx context.Context, s *sinkState, batch []record, alerts []Alert, bo *backoff) bool {
	for {
		err := s.sink.Deliver(ctx, alerts)
		if err == nil {
			o.noteDelivered(s, len(alerts))
			bo.reset()
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if IsPermanent(err) {
			if len(batch) == 1 {
				o.noteRejected(s, batch[0], err)
				return true
			}
			// Find the refused alerts: one at a time.
			for i := range batch {
				if !o.deliver(ctx, s, batch[i:i+1], alerts[i:i+1], bo) {
					return false
				}
				o.ack(s, batch[i].seq+1)
			}
			return true
		}
		o.noteFailure(s, err)
		if !sleep(ctx, bo.next()) {
			return false
		}
	}
}

// ack records that the sink is done with every record before next, on
// disk too, and deletes the segments no sink needs any more.
func (o *Outbox) ack(s *sinkState, next uint64) {
	o.mu.Lock()
	if next <= s.acked {
		o.mu.Unlock()
		return
	}
	s.acked = next
	o.mu.Unlock()
	err := writeAck(s.ackPath, next)
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		if !s.ackFailing {
			o.log.Error("siem outbox: cannot save a sink's position (after a restart it resends from the last saved one)", "sink", s.name, "err", err)
		}
		s.ackFailing = true
		return
	}
	s.ackFailing = false
	s.persisted = max(s.persisted, next)
	o.gcLocked()
}

func (o *Outbox) noteDelivered(s *sinkState, n int) {
	o.mu.Lock()
	s.delivered += uint64(n)
	s.lastDelivered = time.Now()
	since := s.failingSince
	s.failingSince = time.Time{}
	queued := o.queuedLocked(s)
	o.mu.Unlock()
	if !since.IsZero() {
		o.log.Info("siem: delivery resumed", "sink", s.name, "down_for", time.Since(since).Round(time.Millisecond), "queued", queued)
	}
}

func (o *Outbox) noteFailure(s *sinkState, err error) {
	o.mu.Lock()
	now := time.Now()
	s.lastErr, s.lastErrAt = err.Error(), now
	first := s.failingSince.IsZero()
	if first {
		s.failingSince = now
	}
	queued := o.queuedLocked(s)
	o.mu.Unlock()
	if first {
		o.log.Warn("siem: delivery failing; retrying", "sink", s.name, "err", err, "queued", queued)
	} else {
		o.log.Debug("siem: delivery still failing", "sink", s.name, "err", err, "queued", queued)
	}
}

func (o *Outbox) noteRejected(s *sinkState, r record, err error) {
	o.mu.Lock()
	s.rejected++
	s.lastErr, s.lastErrAt = err.Error(), time.Now()
	o.mu.Unlock()
	o.log.Error("siem: receiver refused an alert; skipped it", "sink", s.name, "kind", r.alert.Kind, "id", r.alert.ID, "seq", r.seq, "err", err)
}

// backoff is a capped exponential backoff with ±10% jitter.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	d := b.cur
	if j := int64(d / 10); j > 0 {
		d += time.Duration(rand.Int64N(2*j+1) - j)
	}
	return d
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
