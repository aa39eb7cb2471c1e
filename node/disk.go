package node

// A member whose disk is full.
//
// Everything a member keeps on disk is in its data dir: the raft log
// (raft.db) and snapshots, the decision log, the monitor's baselines and
// access logs. What it decides from is in memory. So a member whose data
// dir's file system fills up can go on deciding, but must not take writes
// it cannot store, and must say why.
//
// diskWatch samples the free space of the data dir's file system (statfs)
// every diskCheckEvery, and at once when a write fails for lack of space.
// The data dir is
//
//   - low below diskLowBelow (64 MiB) free: a warning, nothing changes;
//   - full below diskFullBelow (16 MiB) free, or when a write failed with
//     ENOSPC (or EDQUOT) and no sample since has found that much free.
//
// While it is full the member
//
//   - takes no writes as leader: the API answers 503 disk_full (a
//     follower forwarding the write retries it with the next leader), and
//     the member hands its leadership to the most up-to-date follower
//     (raft.Store.HandOver), so the other members take writes within
//     moments. As a follower it forwards writes to the leader as ever; the
//     raft entries it cannot append are sent again by the leader until it
//     can (until then it serves the revision it had applied);
//   - keeps answering ext_authz and xDS from its replica;
//   - drops and counts decision-log lines, and records the gap when it can
//     write again (authz/decisionlog.go);
//   - says so: once in its log when it fills and when it has space again,
//     in GET /v1/node ("disk") and in the metrics.
//
// Nothing needs doing when space returns: the next sample finds it, the
// leader's retries catch the member up, and the decision log heals.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

const (
	// diskCheckEvery is how often the data dir's free space is sampled.
	diskCheckEvery = time.Second
	// diskLowBelow and diskFullBelow are the free space under which the
	// data dir is low (a warning) and full (no writes).
	diskLowBelow  = 64 << 20
	diskFullBelow = 16 << 20
	// diskHandOverEvery spaces a full member's hand-overs: one that leads
	// again soon after handing over (every member's disk may be full) does
	// not pass the leadership round every second.
	diskHandOverEvery = 5 * time.Second
	// diskFreshFor is how old a sample a write on the leader trusts; an
	// older one is taken again first (a statfs costs a microsecond or two),
	// so that a leader whose disk has just filled refuses the next write
	// rather than having raft fail to store it.
	diskFreshFor = 20 * time.Millisecond
)

// diskWatch keeps the verdict on the member's data dir; see above.
type diskWatch struct {
	dir    string
	member string
	log    *slog.Logger
	// statfs reports the free (to this process) and total bytes of dir's
	// file system.
	statfs func(dir string) (free, total uint64, err error)
	// leads and handOver are the store's IsLeader and HandOver.
	leads    func() bool
	handOver func() error
	kick     chan struct{}

	mu       sync.Mutex
	sampled  time.Time // when free and total were read (or failed to be)
	free     uint64
	total    uint64
	statErr  error
	noSpace  string    // a write that failed for lack of space, until a later sample finds room
	reported time.Time // when noSpace was reported
	lastErr  string    // the last write that failed for lack of space, kept
	level    diskLevel
	since    time.Time // when the data dir became full
	refused  uint64    // writes refused while full
	handErr  string    // the last failed hand-over, while full
	handedAt time.Time // the last hand-over

	// fullAt is since (unix nanoseconds) while full, else 0: read on
	// every Check (fullFor), so not under mu.
	fullAt atomic.Int64
}

// fullFor is how long the data dir has been full as of now, zero when it
// is not. A full follower cannot append what the cluster commits, so its
// replica is that much behind at most: its decisions count as stale for
// that long (see quorum.staleness).
func (d *diskWatch) fullFor(now time.Time) time.Duration {
	at := d.fullAt.Load()
	if at == 0 {
		return 0
	}
	return max(now.Sub(time.Unix(0, at)), 0)
}

type diskLevel int

const (
	diskOK diskLevel = iota
	diskLow
	diskFull
)

func newDiskWatch(dir, member string, store *raft.Store, log *slog.Logger) *diskWatch {
	d := &diskWatch{dir: dir, member: member, log: log, statfs: statfs,
		leads: store.IsLeader, handOver: store.HandOver, kick: make(chan struct{}, 1)}
	d.sample(time.Now()) // a member that starts short of space says so at once
	return d
}

// run samples every diskCheckEvery, and when kicked, until ctx ends; while
// the data dir is full and this member leads, it hands the leadership over
// (again after diskHandOverEvery at the soonest).
func (d *diskWatch) run(ctx context.Context) error {
	t := time.NewTicker(diskCheckEvery)
	defer t.Stop()
	for {
		d.mu.Lock()
		now := time.Now()
		d.sample(now)
		handOver := d.level == diskFull && now.Sub(d.handedAt) >= diskHandOverEvery
		d.mu.Unlock()
		if handOver && d.leads() {
			d.stepDown()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-d.kick:
		}
	}
}

// stepDown hands the leadership over, logging a failure once per kind.
func (d *diskWatch) stepDown() {
	start := time.Now()
	err := d.handOver()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		if msg := err.Error(); errorKind(msg) != errorKind(d.handErr) {
			d.log.Error("data dir is full but the leadership could not be handed over; retrying: writes are refused meanwhile",
				"data_dir", d.dir, "err", err)
		}
		d.handErr = err.Error()
		return
	}
	d.handErr, d.handedAt = "", time.Now()
	d.log.Warn("data dir is full: handed the leadership over to another member", "data_dir", d.dir,
		"took", d.handedAt.Sub(start).Round(time.Millisecond))
}

// sample reads the free space now and updates the verdict; d.mu is held.
func (d *diskWatch) sample(now time.Time) {
	d.sampled = now
	d.free, d.total, d.statErr = d.statfs(d.dir)
	if d.statErr == nil && d.free >= diskFullBelow && now.Sub(d.reported) >= diskCheckEvery {
		d.noSpace = ""
	}
	d.judge(now)
}

// judge sets the level from the last sample and reports, and logs a
// change once; d.mu is held.
func (d *diskWatch) judge(now time.Time) {
	level := diskOK
	switch {
	case d.noSpace != "" || d.statErr == nil && d.free < diskFullBelow:
		level = diskFull
	case d.statErr == nil && d.free < diskLowBelow:
		level = diskLow
	}
	if level == d.level {
		return
	}
	was := d.level
	d.level = level
	if level != diskFull {
		d.fullAt.Store(0)
	}
	switch {
	case level == diskFull:
		d.since = now
		d.fullAt.Store(now.UnixNano())
		d.log.Error("data dir is full: this member takes no writes (as leader it hands its leadership over), "+
			"keeps deciding from what it has applied, and drops decision-log lines until there is space again",
			"data_dir", d.dir, "free", bytesText(d.free), "total", bytesText(d.total), "reason", d.reason())
	case was == diskFull:
		d.log.Info("data dir has space again: this member takes writes and catches up", "data_dir", d.dir,
			"free", bytesText(d.free), "full_for", now.Sub(d.since).Round(time.Millisecond))
	case level == diskLow:
		d.log.Warn("data dir is low on space", "data_dir", d.dir, "free", bytesText(d.free),
			"total", bytesText(d.total), "full_below", bytesText(diskFullBelow))
	}
}

// reason says why the data dir counts as full; d.mu is held.
func (d *diskWatch) reason() string {
	if d.noSpace != "" {
		return "a write failed: " + d.noSpace
	}
	return fmt.Sprintf("%s free, less than %s", bytesText(d.free), bytesText(diskFullBelow))
}

// report notes a write that failed: one that failed for lack of space makes
// the data dir full at once. It reports whether err was such a failure.
func (d *diskWatch) report(err error) bool {
	if !noSpace(err) {
		return false
	}
	d.mu.Lock()
	d.noSpace, d.lastErr, d.reported = err.Error(), err.Error(), time.Now()
	d.sample(d.reported) // the free space as it is now, for the log and status
	d.mu.Unlock()
	d.wake()
	return true
}

func (d *diskWatch) wake() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// refuse is nil when a write may be proposed here, and otherwise the
// error that answers it: the data dir is full. It samples again when the
// last sample is older than diskFreshFor, so that a leader notices a full
// disk before its log store does.
func (d *diskWatch) refuse() error {
	d.mu.Lock()
	if now := time.Now(); now.Sub(d.sampled) > diskFreshFor {
		d.sample(now)
	}
	if d.level != diskFull {
		d.mu.Unlock()
		return nil
	}
	d.refused++
	err := d.errorLocked(nil, true)
	d.mu.Unlock()
	d.wake() // hand over now
	return err
}

// fullError is the answer to a write that failed for lack of space.
func (d *diskWatch) fullError(cause error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.errorLocked(cause, true)
}

// errorLocked is the answer to a write (a raft write, or else a snapshot)
// refused or failed for lack of space; d.mu is held.
func (d *diskWatch) errorLocked(cause error, write bool) error {
	msg := fmt.Sprintf("member %s takes no writes: its data dir %s is full (%s)", d.member, d.dir, d.reason())
	if cause != nil && cause.Error() != d.noSpace {
		msg += ": " + cause.Error()
	}
	if write {
		msg += "; the write was not applied. This member hands its leadership to another one and keeps deciding " +
			"from what it has applied: retry, through any member"
	} else {
		msg += "; no snapshot was taken"
	}
	return &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeDiskFull, Message: msg}
}

// status is the "disk" part of GET /v1/node.
func (d *diskWatch) status() map[string]any {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]any{
		"path":      d.dir,
		"full":      d.level == diskFull,
		"low":       d.level != diskOK,
		"fullBelow": diskFullBelow,
		"lowBelow":  diskLowBelow,
		"checkedAt": d.sampled.UTC(),
	}
	if d.statErr != nil {
		out["error"] = "free space unknown: " + d.statErr.Error()
	} else {
		out["freeBytes"], out["totalBytes"] = d.free, d.total
	}
	if d.level == diskFull {
		out["reason"] = d.reason()
		out["since"] = d.since.UTC()
		out["fullFor"] = time.Since(d.since).Round(time.Millisecond).String()
		if d.handErr != "" {
			out["handOverError"] = d.handErr
		}
	}
	if d.lastErr != "" {
		out["lastError"] = d.lastErr
	}
	out["refusedWrites"] = d.refused
	return out
}

// state reports the verdict and the free bytes, for the metrics.
func (d *diskWatch) state() (full bool, free uint64, known bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.level == diskFull, d.free, d.statErr == nil && !d.sampled.IsZero()
}

// noSpace reports whether err is a write that failed for lack of space.
// The raft log store's errors reach us as text (hashicorp/raft's log cache
// formats them with %q), so the text counts too.
func noSpace(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, syscall.ENOSPC.Error()) || strings.Contains(msg, syscall.EDQUOT.Error())
}

func bytesText(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// diskGate is the store as the API writes to it: while the data dir is
// full a leader refuses writes (diskWatch.refuse), and a write that fails
// for lack of space is answered as such (503 disk_full) rather than as an
// internal error. Reads, and writes on a follower (which forwards them),
// pass through.
type diskGate struct {
	*raft.Store
	disk *diskWatch
}

var (
	_ api.Store         = diskGate{}
	_ api.IncidentStore = diskGate{}
)

// guard runs a write that would be proposed here.
func (g diskGate) guard(write func() error) error {
	if g.Store.IsLeader() {
		if err := g.disk.refuse(); err != nil {
			return err
		}
	}
	err := write()
	// A write raft could not store was not proposed to anyone: the
	// leader stores an entry before it sends it. One whose fate is unknown
	// is answered as such.
	if err != nil && !errors.Is(err, raft.ErrOutcomeUnknown) && g.disk.report(err) {
		return g.disk.fullError(err)
	}
	return err
}

func (g diskGate) ReplaceDocument(ctx context.Context, ix *topology.Index) (rev topology.Revision, err error) {
	err = g.guard(func() error { rev, err = g.Store.ReplaceDocument(ctx, ix); return err })
	return rev, err
}

func (g diskGate) UpdateState(ctx context.Context, ops []raft.StateOp) (rev topology.Revision, err error) {
	err = g.guard(func() error { rev, err = g.Store.UpdateState(ctx, ops); return err })
	return rev, err
}

func (g diskGate) AddVoter(ctx context.Context, m raft.Member) error {
	return g.guard(func() error { return g.Store.AddVoter(ctx, m) })
}

func (g diskGate) RemoveMember(ctx context.Context, id string) error {
	return g.guard(func() error { return g.Store.RemoveMember(ctx, id) })
}

func (g diskGate) Checkpoint(ctx context.Context, cp raft.SignedCheckpoint) (rev topology.Revision, err error) {
	err = g.guard(func() error { rev, err = g.Store.Checkpoint(ctx, cp); return err })
	return rev, err
}

func (g diskGate) OpenIncident(ctx context.Context, inc topology.Incident) (rev topology.Revision, err error) {
	err = g.guard(func() error { rev, err = g.Store.OpenIncident(ctx, inc); return err })
	return rev, err
}

func (g diskGate) UpdateIncident(ctx context.Context, u raft.IncidentUpdate) (rev topology.Revision, err error) {
	err = g.guard(func() error { rev, err = g.Store.UpdateIncident(ctx, u); return err })
	return rev, err
}

// Snapshot writes a snapshot on this member, leader or not: refused while
// the data dir is full.
func (g diskGate) Snapshot() error {
	d := g.disk
	d.mu.Lock()
	if now := time.Now(); now.Sub(d.sampled) > diskFreshFor {
		d.sample(now)
	}
	var err error
	if d.level == diskFull {
		err = d.errorLocked(nil, false)
	}
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if err := g.Store.Snapshot(); err != nil {
		if d.report(err) {
			d.mu.Lock()
			defer d.mu.Unlock()
			return d.errorLocked(err, false)
		}
		return err
	}
	return nil
}
