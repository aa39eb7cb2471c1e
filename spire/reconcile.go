package spire

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// Config sets up a Reconciler.
type Config struct {
	Client  *Client
	Options Options
	// IsLeader reports whether this member may change the server: the
	// leader, once caught up. Required.
	IsLeader func() bool
	// VerifyLeader confirms, right before each change to the server, that
	// a quorum still follows this member: IsLeader is the member's own
	// view, which a stalled leader keeps when it resumes. It is asked
	// before every batch, so it must be cheap when asked again soon
	// (raft.Store.VerifiedLeader is). nil: IsLeader is trusted.
	VerifyLeader func(context.Context) bool
	Logger       *slog.Logger
	// Debounce coalesces bursts of changes (default 100ms); a quarantine
	// is acted on at once.
	Debounce time.Duration
	// Resync is how often the whole server is compared with the topology
	// even without a change (default 5m), which repairs entries changed
	// behind Vigil's back.
	Resync time.Duration
	// BatchSize bounds one batch create, update or delete (default 500).
	BatchSize int
	// Parallel is how many batches are in flight at once (default 1). The
	// server writes an entry per transaction: on sqlite3 more than one
	// batch only contends; on PostgreSQL a few in flight fill the cores.
	Parallel int
	Now      func() time.Time
}

// Change is one committed change, as the store reports it.
type Change struct {
	// Document or Restored: the whole topology may have changed.
	Document, Restored bool
	// Subjects whose runtime state changed.
	Subjects []topology.Subject
}

// Result counts what one reconcile pass did.
type Result struct {
	Revision topology.Revision `json:"revision"`
	Full     bool              `json:"full"`
	Desired  int               `json:"desired,omitempty"`
	Created  int               `json:"created"`
	Updated  int               `json:"updated"`
	Deleted  int               `json:"deleted"`
	Banned   int               `json:"banned"`
	Evicted  int               `json:"evicted"`
	// Errors are the entries and agents that could not be changed (the
	// pass went on without them); at most maxErrors are kept, Failed
	// counts them all.
	Errors []string `json:"errors,omitempty"`
	Failed int      `json:"failed"`
	// failedBy counts Failed by ErrorOps.
	failedBy [len(ErrorOps)]int
	// Skipped are the declared cloud edges this topology cannot serve
	// (Options.Edges), and why; not failures: each is logged once.
	Skipped  []string      `json:"skipped,omitempty"`
	Duration time.Duration `json:"duration"`
}

const maxErrors = 10

// ErrorOps name what a pass could not do for one entry or agent binding:
// plan it (the topology asks for one that cannot be made, e.g. a bad
// selectors label), or create, update or delete it on the server.
var ErrorOps = [...]string{"plan", "create", "update", "delete"}

const (
	opPlan = iota
	opCreate
	opUpdate
	opDelete
)

func (res *Result) fail(op int, err error) {
	res.Failed++
	res.failedBy[op]++
	if len(res.Errors) < maxErrors {
		res.Errors = append(res.Errors, err.Error())
	}
}

// Status describes the reconciler for operators.
type Status struct {
	Leader bool `json:"leader"`
	// Pending is true while a change waits to be applied.
	Pending bool `json:"pending"`
	// Last is the last pass, LastFull the last full one; Error the last
	// pass that failed as a whole (cleared by a later success).
	Last     *Result `json:"last,omitempty"`
	LastFull *Result `json:"lastFull,omitempty"`
	Error    string  `json:"error,omitempty"`
	// Lag is Stats.Lag, as a duration ("3.2s"): how long the oldest
	// committed change not yet applied to the server has waited, a pass
	// under way included (one stuck on a server that does not answer).
	// Empty when the server is up to date or this member does not lead.
	Lag string `json:"lag,omitempty"`
}

// Reconciler keeps a SPIRE server's entries and agent bindings equal to
// what the latest committed topology wants. Update hands it every change;
// Run applies them while this member leads. All its state comes from the
// server itself, so it survives restarts and leader changes.
type Reconciler struct {
	cfg  Config
	log  *slog.Logger
	wake chan struct{}

	mu       sync.Mutex
	snap     *topology.Snapshot
	full     bool
	subjects map[topology.Subject]bool
	urgent   bool
	status   Status
	// skipped are the edges skipped by the last full pass, which were
	// warned about once.
	skipped map[string]bool
	// pendingSince is when the oldest committed change waiting in full or
	// subjects arrived, inflightSince that of the pass under way (zero:
	// none); together they are Stats.Lag.
	pendingSince, inflightSince time.Time
	stats                       Stats
}

// Stats are a reconciler's running totals since it started, for metrics.
type Stats struct {
	// Passes counts the passes made as leader that succeeded, Failed
	// those that failed as a whole (the server unreachable or refusing,
	// another trust domain) and were retried; full passes and those over
	// the subjects a change named apart.
	Passes, Failed PassCounts
	// Unconfirmed counts the passes stopped before their next change to
	// the server because a quorum did not confirm this member's
	// leadership (VerifyLeader): a deposed leader that had not noticed.
	Unconfirmed PassCounts
	// Errors counts, by ErrorOps, the entries and agent bindings that
	// otherwise successful passes went on without.
	Errors [len(ErrorOps)]uint64
	// Lag is how long the oldest committed change not yet applied to the
	// server has waited, the pass under way included: zero when the
	// server is up to date, and on a member that does not lead. A resync
	// or a new leader's comparison of everything is no change: only the
	// changes that arrive meanwhile wait for it.
	Lag time.Duration
}

// PassCounts count passes by kind.
type PassCounts struct{ Full, Subjects uint64 }

func (p *PassCounts) add(full bool) {
	if full {
		p.Full++
	} else {
		p.Subjects++
	}
}

// earliest is the earlier of two times, zero meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// NewReconciler checks cfg and returns a reconciler.
func NewReconciler(cfg Config) (*Reconciler, error) {
	if cfg.Client == nil || cfg.IsLeader == nil {
		return nil, errors.New("spire: a client and IsLeader are required")
	}
	if err := cfg.Options.Validate(); err != nil {
		return nil, fmt.Errorf("spire: %w", err)
	}
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	cfg.Debounce = cmp.Or(cfg.Debounce, 100*time.Millisecond)
	cfg.Resync = cmp.Or(cfg.Resync, 5*time.Minute)
	cfg.BatchSize = cmp.Or(cfg.BatchSize, 500)
	cfg.Parallel = max(cfg.Parallel, 1)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Reconciler{cfg: cfg, log: cfg.Logger, wake: make(chan struct{}, 1), subjects: make(map[topology.Subject]bool)}, nil
}

// Update records a committed change. A change of the document (or a
// restore) makes the next pass a full one; a change of runtime state only
// revisits the subjects it names. A subject that became quarantined makes
// the pass run at once rather than after the debounce.
func (r *Reconciler) Update(snap *topology.Snapshot, ch Change) {
	r.mu.Lock()
	r.snap = snap
	if (ch.Document || ch.Restored || len(ch.Subjects) > 0) && r.pendingSince.IsZero() {
		r.pendingSince = r.cfg.Now()
	}
	if ch.Document || ch.Restored {
		r.full = true
	}
	for _, s := range ch.Subjects {
		r.subjects[s] = true
		if snap.Quarantined(s) {
			r.urgent = true
		}
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Status reports the last passes.
func (r *Reconciler) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.status
	st.Leader = r.cfg.IsLeader()
	st.Pending = r.full || len(r.subjects) > 0
	if oldest := earliest(r.pendingSince, r.inflightSince); st.Leader && !oldest.IsZero() {
		st.Lag = max(r.cfg.Now().Sub(oldest), 0).Round(time.Millisecond).String()
	}
	return st
}

// Stats returns the reconciler's totals and its lag.
func (r *Reconciler) Stats() Stats {
	lead := r.cfg.IsLeader()
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stats
	if oldest := earliest(r.pendingSince, r.inflightSince); lead && !oldest.IsZero() {
		st.Lag = max(r.cfg.Now().Sub(oldest), 0)
	}
	return st
}

// maxRetry is the longest wait between failed passes: a SPIRE server that
// comes back after an outage gets the waiting quarantines' deletions within
// about this long (it was 30 s; a pass costs one call to a server that is
// down).
const maxRetry = 5 * time.Second

// Run applies changes until ctx ends. It only acts while IsLeader is true;
// on becoming leader it compares everything, and every Resync again.
func (r *Reconciler) Run(ctx context.Context) error {
	leaderTick := time.NewTicker(250 * time.Millisecond)
	defer leaderTick.Stop()
	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	var debounce, retry <-chan time.Time
	backoff := time.Second
	leading := false
	unconfirmed := false // said so once
	pass := func() {
		debounce = nil
		if !r.cfg.IsLeader() {
			// A member that comes to lead compares everything anyway.
			r.mu.Lock()
			r.full, r.urgent = false, false
			clear(r.subjects)
			r.pendingSince = time.Time{}
			r.mu.Unlock()
			return
		}
		full, err := r.runPending(ctx)
		if errors.Is(err, ErrNotConfirmed) && ctx.Err() == nil {
			// Deposed, most likely: the next pass finds IsLeader false
			// and drops the work; a leader that lost a round of
			// heartbeats retries it.
			if !unconfirmed {
				r.log.Warn("spire: this member believes it leads but a quorum did not confirm it; changing nothing on the SPIRE server")
			}
			unconfirmed = true
			retry = time.After(backoff)
			backoff = min(2*backoff, maxRetry)
			return
		}
		unconfirmed = false
		if err != nil && ctx.Err() == nil {
			r.log.Error("spire: reconcile failed; retrying", "err", err, "in", backoff)
			retry = time.After(backoff)
			backoff = min(2*backoff, maxRetry)
			return
		}
		backoff = time.Second
		// A full pass as leader is what taking the lead calls for.
		leading = leading || full
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
			r.mu.Lock()
			urgent := r.urgent
			r.mu.Unlock()
			if urgent {
				pass()
			} else if debounce == nil {
				debounce = time.After(r.cfg.Debounce)
			}
		case <-debounce:
			pass()
		case <-retry:
			retry = nil
			pass()
		case <-leaderTick.C:
			lead := r.cfg.IsLeader()
			if lead && !leading {
				r.log.Info("spire: this member leads; reconciling the SPIRE server with the topology")
				r.markFull()
				pass()
			}
			leading = lead
		case <-resync.C:
			r.markFull()
			pass()
		}
	}
}

// ErrNotConfirmed is the error of a change this member did not make
// because a quorum did not confirm, just before, that it still leads.
var ErrNotConfirmed = errors.New("spire: this member's leadership is not confirmed by a quorum; the SPIRE server was not changed")

// confirm is asked right before each change to the server (a batch of
// entries, an agent's ban or eviction, a join token): a member that
// believes it leads but is not confirmed changes nothing. The answer is
// cached by VerifyLeader for a fraction of the election timeout, so a
// pass costs a round of heartbeats, not one per batch; a pass longer
// than that is confirmed again between batches.
func (r *Reconciler) confirm(ctx context.Context) error {
	if r.cfg.VerifyLeader == nil || r.cfg.VerifyLeader(ctx) {
		return nil
	}
	return ErrNotConfirmed
}

func (r *Reconciler) markFull() {
	r.mu.Lock()
	r.full = true
	r.mu.Unlock()
}

// runPending does the pending work on the latest snapshot and reports
// whether it made a full pass; on failure the work stays pending.
func (r *Reconciler) runPending(ctx context.Context) (bool, error) {
	r.mu.Lock()
	snap, full, subjects := r.snap, r.full, slices.Collect(maps.Keys(r.subjects))
	since := r.pendingSince
	r.full, r.urgent = false, false
	clear(r.subjects)
	r.pendingSince, r.inflightSince = time.Time{}, since
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.inflightSince = time.Time{}
		r.mu.Unlock()
	}()
	if snap == nil || !full && len(subjects) == 0 {
		return false, nil
	}
	// Confirmed before the pass reads the server (a full pass reads every
	// entry), and again before each change (cached meanwhile).
	err := r.confirm(ctx)
	if err != nil {
		r.record(nil, err, full)
	}
	// The named subjects go first even when a full pass is due: a
	// quarantine must not wait for a pass over the whole fleet.
	var res *Result
	if err == nil && len(subjects) > 0 {
		res, err = r.reconcileSubjects(ctx, snap, subjects)
		r.record(res, err, false)
	}
	if err == nil && full {
		res, err = r.reconcile(ctx, snap, &guard{r: r, skip: make(map[topology.Subject]bool)})
		r.record(res, err, true)
	}
	if err != nil {
		r.mu.Lock()
		r.full = r.full || full
		for _, s := range subjects {
			r.subjects[s] = true
		}
		r.pendingSince = earliest(r.pendingSince, since)
		r.mu.Unlock()
	}
	return full && err == nil, err
}

func (r *Reconciler) record(res *Result, err error, full bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if errors.Is(err, ErrNotConfirmed) {
		r.stats.Unconfirmed.add(full)
		return
	}
	if err != nil {
		r.stats.Failed.add(full)
		r.status.Error = err.Error()
		return
	}
	r.stats.Passes.add(full)
	for op, n := range res.failedBy {
		r.stats.Errors[op] += uint64(n)
	}
	r.status.Error = ""
	r.status.Last = res
	if full {
		r.status.LastFull = res
	}
}

// checkTrustDomain refuses to act on a document of another trust domain:
// the server would reject every entry, and Vigil would delete its own.
func (r *Reconciler) checkTrustDomain(ctx context.Context, ix *topology.Index) error {
	td, _, err := r.cfg.Client.Bundle(ctx)
	if err != nil {
		return err
	}
	if td != ix.TrustDomain() {
		return fmt.Errorf("%w: document %q, server %q", ErrTrustDomain, ix.TrustDomain(), td)
	}
	return nil
}

// Reconcile makes the server's entries and bindings what snap wants, in
// one full pass: it lists every entry Vigil owns and every agent, and
// changes only what differs. A snapshot without a document changes
// nothing.
func (r *Reconciler) Reconcile(ctx context.Context, snap *topology.Snapshot) (*Result, error) {
	return r.reconcile(ctx, snap, nil)
}

func (r *Reconciler) reconcile(ctx context.Context, snap *topology.Snapshot, g *guard) (*Result, error) {
	start := r.cfg.Now()
	res := &Result{Revision: snap.Revision(), Full: true}
	if !snap.HasDocument() {
		return res, nil
	}
	if err := r.checkTrustDomain(ctx, snap.Index()); err != nil {
		return nil, err
	}
	o := &r.cfg.Options
	desired, errs := Desired(snap, *o)
	for _, err := range errs {
		if skip := (*EdgeSkipped)(nil); errors.As(err, &skip) {
			res.Skipped = append(res.Skipped, err.Error())
			continue
		}
		res.fail(opPlan, err)
	}
	r.warnSkipped(res.Skipped)
	res.Desired = len(desired)
	listed, err := r.cfg.Client.ListEntries(ctx, o.Owner, "")
	if err != nil {
		return nil, err
	}
	owned := slices.DeleteFunc(listed, func(e Entry) bool { return !o.owns(e.ID) })
	if err := r.apply(ctx, Diff(desired, owned), res, g); err != nil {
		return nil, err
	}
	if err := g.before(ctx); err != nil {
		return nil, err
	}
	bindings, err := r.cfg.Client.ListEntries(ctx, o.bindingHint(), "")
	if err != nil {
		return nil, err
	}
	bindings = slices.DeleteFunc(bindings, func(e Entry) bool { _, ok := o.bindingSubject(e.ID); return !ok })
	bindings = g.entries(bindings)
	// Join-token bindings are planned from what the server holds; the
	// entries of subjects onboarded by vigil_tpm from the document.
	bindings, tpmHave := o.splitTPM(bindings)
	tpmWant, errs := DesiredTPM(snap, *o)
	for _, err := range errs {
		res.fail(opPlan, err)
	}
	res.Desired += len(tpmWant)
	tpmWant = g.entries(tpmWant)
	agents := make(map[string]*Agent)
	if len(bindings) > 0 {
		list, err := r.cfg.Client.ListAgents(ctx)
		if err != nil {
			return nil, err
		}
		for i := range list {
			agents[list[i].ID] = &list[i]
		}
	}
	// Listed only while some class sets attestation.spire (usesTPM):
	// then the agents of subjects that no longer onboard by TPM are
	// evicted; otherwise they may be another cluster's, and are left
	// alone (the TPM entries still go through the Diff: they carry the
	// owner).
	var tpmAgents []Agent
	if usesTPM(snap.Index()) {
		tpmAgents, err = r.cfg.Client.ListAgentsOfType(ctx, TPMAttestor)
		if err != nil {
			return nil, err
		}
		tpmAgents = g.agents(tpmAgents, snap.Index().TrustDomain())
	}
	actions := planBindings(snap, o, bindings, agents, r.cfg.Now())
	actions.add(planTPMAgents(snap, tpmAgents, o.banRecords(tpmHave), r.cfg.Now()))
	// The agents first: a ban bites before anything else, and a released
	// subject's agent is evicted before its ban record is deleted (a
	// failed eviction stops the pass and keeps the record).
	if err := r.applyAgents(ctx, actions, res); err != nil {
		return nil, err
	}
	if err := r.apply(ctx, Diff(tpmWant, tpmHave), res, g); err != nil {
		return nil, err
	}
	res.Duration = r.cfg.Now().Sub(start)
	r.logResult(res)
	return res, nil
}

// reconcileSubjects revisits a few subjects after a change of their
// runtime state: a quarantined device's entry is deleted, a released one's
// created again, a quarantined gateway's agents banned; for a subject
// onboarded by vigil_tpm, its entries are those DesiredTPM wants (its ban
// record included) and its agent is planned by planTPMAgents (banned,
// evicted after a release of Vigil's ban, a failed or expired attestation
// or a new AK). It reads only those subjects' entries and agents:
// a subject that left the topology, or stopped onboarding by TPM, is the
// full pass's (a change of the document makes one).
func (r *Reconciler) reconcileSubjects(ctx context.Context, snap *topology.Snapshot, subjects []topology.Subject) (*Result, error) {
	start := r.cfg.Now()
	res := &Result{Revision: snap.Revision()}
	if !snap.HasDocument() {
		return res, nil
	}
	if err := r.checkTrustDomain(ctx, snap.Index()); err != nil {
		return nil, err
	}
	o := &r.cfg.Options
	ix := snap.Index()
	slices.SortFunc(subjects, func(a, b topology.Subject) int { return cmp.Compare(a.String(), b.String()) })
	td := ix.TrustDomain()
	var desired, existing, bindings, tpmWant, tpmHave []Entry
	var tpmAgents []Agent
	agents := make(map[string]*Agent)
	for _, s := range subjects {
		if s.Kind == topology.KindDevice || s.Kind == topology.KindService {
			want, ok, err := desiredFor(snap, s, o)
			if err != nil {
				res.fail(opPlan, err)
				continue
			}
			if ok {
				desired = append(desired, want)
			}
			have, found, err := r.cfg.Client.GetEntry(ctx, o.EntryID(s))
			if err != nil {
				return nil, err
			}
			if found && have.Hint == o.Owner {
				existing = append(existing, have)
			}
		}
		if bindable(ix, s) != nil {
			continue
		}
		id, _ := ix.SPIFFEID(s)
		tpm := ix.ClassOf(s).SPIRETPM()
		ids := []string{id} // bindings, the TPM binding included
		if tpm {
			ids = append(ids, TPMNodeAliasID(td, s), TPMBanRecordID(td, s)) // firmware aliases, ban record
		}
		for _, spiffeID := range ids {
			list, err := r.cfg.Client.ListEntries(ctx, o.bindingHint(), spiffeID)
			if err != nil {
				return nil, err
			}
			for _, b := range list {
				if bs, ok := o.bindingSubject(b.ID); !ok || bs != s {
					continue
				}
				if o.tpmEntry(b.ID) {
					tpmHave = append(tpmHave, b)
					continue
				}
				bindings = append(bindings, b)
				if a, ok, err := r.cfg.Client.GetAgent(ctx, b.ParentID); err != nil {
					return nil, err
				} else if ok {
					agents[a.ID] = &a
				}
			}
		}
		if !tpm {
			continue
		}
		want, err := desiredTPMFor(snap, s, o)
		if err != nil {
			res.fail(opPlan, err)
		}
		tpmWant = append(tpmWant, want...)
		if a, ok, err := r.cfg.Client.GetAgent(ctx, TPMAgentID(td, s)); err != nil {
			return nil, err
		} else if ok {
			tpmAgents = append(tpmAgents, a)
		}
	}
	if err := r.apply(ctx, Diff(desired, existing), res, nil); err != nil {
		return nil, err
	}
	actions := planBindings(snap, o, bindings, agents, r.cfg.Now())
	actions.add(planTPMAgents(snap, tpmAgents, o.banRecords(tpmHave), r.cfg.Now()))
	// As in the full pass: the agents before the TPM entries.
	if err := r.applyAgents(ctx, actions, res); err != nil {
		return nil, err
	}
	if err := r.apply(ctx, Diff(tpmWant, tpmHave), res, nil); err != nil {
		return nil, err
	}
	res.Duration = r.cfg.Now().Sub(start)
	r.logResult(res)
	return res, nil
}

// apply makes the changes in batches, up to Parallel at once: deletions
// first, then updates, then creations, so that a new entry never clashes
// with one on its way out. Before each batch g (if not nil) may run an
// urgent change and hold back subjects changed since.
func (r *Reconciler) apply(ctx context.Context, c Changes, res *Result, g *guard) error {
	var mu sync.Mutex // guards res
	count := func(n *int, op, done int, errs []*EntryError) {
		mu.Lock()
		defer mu.Unlock()
		*n += done
		for _, e := range errs {
			res.fail(op, e)
		}
	}
	err := inBatches(ctx, r, c.Delete, g, func(ctx context.Context, ids []string) error {
		if ids = g.ids(ids); len(ids) == 0 {
			return nil
		}
		errs, err := r.cfg.Client.DeleteEntries(ctx, ids)
		if err == nil {
			count(&res.Deleted, opDelete, len(ids)-len(errs), errs)
		}
		return err
	})
	if err != nil {
		return err
	}
	for _, op := range []struct {
		entries []Entry
		call    func(context.Context, []Entry) ([]*EntryError, error)
		n       *int
		op      int
	}{{c.Update, r.cfg.Client.UpdateEntries, &res.Updated, opUpdate}, {c.Create, r.cfg.Client.CreateEntries, &res.Created, opCreate}} {
		err := inBatches(ctx, r, op.entries, g, func(ctx context.Context, batch []Entry) error {
			if batch = g.entries(batch); len(batch) == 0 {
				return nil
			}
			errs, err := op.call(ctx, batch)
			if err == nil {
				count(op.n, op.op, len(batch)-len(errs), errs)
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// inBatches calls do for each batch of items, BatchSize at a time, with up
// to Parallel calls in flight; g.before runs ahead of each. The first
// error stops the rest.
func inBatches[T any](ctx context.Context, r *Reconciler, items []T, g *guard, do func(context.Context, []T) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan []T)
	errc := make(chan error, r.cfg.Parallel)
	var wg sync.WaitGroup
	for range min(r.cfg.Parallel, (len(items)+r.cfg.BatchSize-1)/r.cfg.BatchSize) {
		wg.Go(func() {
			for b := range batches {
				err := g.before(ctx)
				if err == nil {
					err = r.confirm(ctx)
				}
				if err == nil {
					err = do(ctx, b)
				}
				if err != nil {
					errc <- err
					cancel()
					return
				}
			}
		})
	}
send:
	for b := range slices.Chunk(items, r.cfg.BatchSize) {
		select {
		case batches <- b:
		case <-ctx.Done():
			break send
		}
	}
	close(batches)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return ctx.Err()
	}
}

// guard lets a long full pass give way. Before each batch it runs the
// targeted pass of an urgent change (a quarantine) at once, on the latest
// snapshot, and it keeps the full pass, computed from an older snapshot,
// off every subject changed since (handled already, or pending: the
// targeted pass after the full one handles those).
type guard struct {
	r    *Reconciler
	mu   sync.Mutex
	skip map[topology.Subject]bool
}

func (g *guard) before(ctx context.Context) error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	r := g.r
	r.mu.Lock()
	for s := range r.subjects {
		g.skip[s] = true
	}
	var urgent []topology.Subject
	snap := r.snap
	if r.urgent {
		urgent = slices.Collect(maps.Keys(r.subjects))
		clear(r.subjects)
		r.urgent = false
	}
	r.mu.Unlock()
	if len(urgent) == 0 {
		return nil
	}
	res, err := r.reconcileSubjects(ctx, snap, urgent)
	r.record(res, err, false)
	if err != nil {
		r.mu.Lock()
		for _, s := range urgent {
			r.subjects[s] = true
		}
		r.mu.Unlock()
	}
	return err
}

// skips must be called with g.mu held.
func (g *guard) skips(id string) bool {
	o := &g.r.cfg.Options
	s, ok := o.subjectOf(id)
	if !ok {
		s, ok = o.bindingSubject(id)
	}
	return ok && g.skip[s]
}

func (g *guard) ids(ids []string) []string {
	if g == nil {
		return ids
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.skip) == 0 {
		return ids
	}
	return slices.DeleteFunc(slices.Clone(ids), g.skips)
}

func (g *guard) entries(es []Entry) []Entry {
	if g == nil {
		return es
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.skip) == 0 {
		return es
	}
	return slices.DeleteFunc(slices.Clone(es), func(e Entry) bool { return g.skips(e.ID) })
}

// agents drops the vigil_tpm agents of subjects changed since the pass
// began (see entries).
func (g *guard) agents(list []Agent, trustDomain string) []Agent {
	if g == nil {
		return list
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.skip) == 0 {
		return list
	}
	return slices.DeleteFunc(slices.Clone(list), func(a Agent) bool {
		s, ok := tpmAgentSubject(trustDomain, a.ID)
		return ok && g.skip[s]
	})
}

// applyAgents bans first: a quarantine must bite before anything else.
func (r *Reconciler) applyAgents(ctx context.Context, a agentActions, res *Result) error {
	for _, err := range a.Errors {
		res.fail(opPlan, err)
	}
	for _, id := range a.Ban {
		if err := r.confirm(ctx); err != nil {
			return err
		}
		if err := r.cfg.Client.BanAgent(ctx, id); err != nil {
			return err
		}
		res.Banned++
		r.log.Info("spire: agent banned", "agent", id)
	}
	for _, id := range a.Evict {
		if err := r.confirm(ctx); err != nil {
			return err
		}
		if err := r.cfg.Client.DeleteAgent(ctx, id); err != nil {
			return err
		}
		res.Evicted++
		r.log.Info("spire: agent evicted", "agent", id)
	}
	return r.apply(ctx, Changes{Update: a.Update, Delete: a.Delete}, res, nil)
}

// warnSkipped logs each skipped edge once, when a full pass first skips
// it; one that is served again and later skipped again is logged again.
func (r *Reconciler) warnSkipped(skipped []string) {
	now := make(map[string]bool, len(skipped))
	var fresh []string
	r.mu.Lock()
	for _, s := range skipped {
		now[s] = true
		if !r.skipped[s] {
			fresh = append(fresh, s)
		}
	}
	r.skipped = now
	r.mu.Unlock()
	for _, s := range fresh {
		r.log.Warn("spire: " + s)
	}
}

func (r *Reconciler) logResult(res *Result) {
	changed := res.Created + res.Updated + res.Deleted + res.Banned + res.Evicted
	if changed == 0 && res.Failed == 0 {
		return
	}
	level := slog.LevelInfo
	if res.Failed > 0 {
		level = slog.LevelWarn
	}
	r.log.Log(context.Background(), level, "spire: reconciled", "revision", res.Revision, "full", res.Full,
		"created", res.Created, "updated", res.Updated, "deleted", res.Deleted, "banned", res.Banned,
		"evicted", res.Evicted, "failed", res.Failed, "errors", res.Errors, "took", res.Duration)
}
