package e2e_test

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/e2e/lincheck"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

const (
	linDevices   = 8
	linClients   = 6
	linOpTimeout = 3 * time.Second
	// linFault is how long each fault lasts, linSettle how long the
	// healed cluster runs before the next one.
	linFault  = 2500 * time.Millisecond
	linSettle = 2 * time.Second
	// linRiskSignal names the signal that carries a risk write's unique
	// value: a score (0 to 100) cannot be unique for long.
	linRiskSignal = "lincheck"
)

// TestLinearizableUnderFaults records, from concurrent clients spread over
// every member (two per member), a history of quarantines, releases, risk
// writes and reads (with min_revision from the revision oracle, see package
// lincheck) on a few devices while a schedule of faults runs, and checks
// it with porcupine; a violation fails the test with the path of
// porcupine's visualisation. Every fault is healed and followed by a
// settling period, and the next starts once every member follows one
// leader again. It also logs, per fault, the longest time without an
// acknowledged write (through any member and through each), when raft
// elected a new leader, and the operations that took over a second.
func TestLinearizableUnderFaults(t *testing.T) {
	fn := harness.NewFaultNet()
	t.Cleanup(func() { fn.Close() }) // Cluster.Close closes it too; this is for a cluster that never started
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 3, Faults: fn, Timeout: 20 * time.Second})
	t.Cleanup(func() { // a test that fails during a pause must not leave a stopped member behind
		for i := range c.Size() {
			if c.Paused(i) {
				c.Resume(i)
			}
		}
	})

	doc, err := json.Marshal(topologytest.Generate(topologytest.Spec{Zones: 1, GatewaysPerZone: 2, Devices: linDevices, NoAttestation: true}))
	if err != nil {
		t.Fatal(err)
	}
	docRev, err := c.Client(0).ApplyTopology(ctxFor(t, 30*time.Second), doc)
	if err != nil {
		t.Fatalf("apply a %d-device document: %v", linDevices, err)
	}
	checkDocument(t, c, []int{0, 1, 2}, docRev, docRev, linDevices)
	if t.Failed() {
		t.FailNow()
	}
	devices := make([]string, linDevices)
	for i := range devices {
		devices[i] = topologytest.DeviceName(i)
	}

	rec := lincheck.NewRecorder()
	errs := &linErrors{byKind: map[string]int{}, sample: map[string]string{}}
	ctx, stopClients := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for id := range linClients {
		wg.Go(func() { linClient(ctx, c, rec, errs, id, devices) })
	}
	watch := linWatchRaft(ctx, &wg, c, rec)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stopClients()
			wg.Wait()
		}
	}
	defer stop()

	s := &linSchedule{t: t, c: c, fn: fn, rec: rec, errs: errs, watch: watch}
	start := rec.Now()
	time.Sleep(linSettle) // a fault-free start, for comparison
	s.warmup = linWindow{start: start, end: rec.Now()}
	s.run()
	stop()

	ops := rec.Operations()
	st := rec.Stats()
	t.Logf("history: %d operations; %s", len(ops), st)
	errs.log(t)
	checkStart := time.Now()
	res, info := rec.Check(60 * time.Second)
	checkTook := time.Since(checkStart)
	t.Logf("porcupine: %s in %v", res, checkTook.Round(time.Millisecond))
	s.report(ops)

	if res != porcupine.Ok {
		path := filepath.Join(artifactDir(t, "linearizability"), fmt.Sprintf("history-%s.html", time.Now().Format("20060102-150405")))
		if err := rec.Visualize(info, path); err != nil {
			t.Errorf("write the visualisation: %v", err)
		}
		if res == porcupine.Unknown {
			t.Fatalf("the linearizability check did not finish within its timeout (%v); the history is in %s", checkTook.Round(time.Millisecond), path)
		}
		t.Fatalf("the history is NOT linearizable; visualisation: %s\nfaults: %s\n%s", path, s.describe(), lincheck.Explain(ops))
	}
	if t.Failed() { // the schedule could not run to the end
		return
	}
	if st.AcknowledgedWrites() < 200 || st.Reads < 200 {
		t.Fatalf("a history too small to mean anything: %d acknowledged writes and %d reads, want at least 200 of each", st.AcknowledgedWrites(), st.Reads)
	}
	if errs.definite > 0 {
		t.Errorf("%d operations were refused outright (4xx); a correct client should get none", errs.definite)
	}
}

// linClient runs random operations on random devices at its home member
// until ctx ends. Each client keeps to one member, so that clients of a
// healthy member are never held up by a faulty one and the gaps between
// their acknowledgements measure the cluster's availability, not the
// clients'. After an error it pauses a little, so that a dead member does
// not turn into a flood of indeterminate writes.
func linClient(ctx context.Context, c *harness.Cluster, rec *lincheck.Recorder, errs *linErrors, id int, devices []string) {
	rng := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	m := id % c.Size()
	for seq := 0; ctx.Err() == nil; seq++ {
		dev := devices[rng.IntN(len(devices))]
		in := lincheck.Input{Device: dev}
		switch r := rng.IntN(20); {
		case r < 4:
			in.Kind, in.Reason = lincheck.Quarantine, fmt.Sprintf("lin-c%d-%d", id, seq)
		case r < 6:
			in.Kind = lincheck.Release
		case r < 10:
			in.Kind, in.Risk = lincheck.SetRisk, id*1_000_000+seq
		default:
			in.Kind = lincheck.Read
		}
		// Not derived from ctx: an operation under way when the clients
		// stop finishes (bounded) rather than becoming indeterminate.
		opCtx, cancel := context.WithTimeout(context.Background(), linOpTimeout)
		began := rec.Now()
		err := linDo(opCtx, c.Client(m), rec.Begin(id, c.Member(m).ID, in))
		cancel()
		if took := rec.Now() - began; took > int64(time.Second) {
			errs.slowOp(linSlowOp{at: began, took: took, member: c.Member(m).ID, kind: in.Kind, err: err})
		}
		if err != nil {
			errs.add(in.Kind, err)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// linDo runs one operation and records how it ended.
func linDo(ctx context.Context, cl *api.Client, call *lincheck.Call) error {
	in := call.Input()
	sub := topology.DeviceSubject(in.Device)
	var rev topology.Revision
	var err error
	switch in.Kind {
	case lincheck.Quarantine:
		var v *api.Subject
		if v, err = cl.Quarantine(ctx, topology.KindDevice, in.Device, in.Reason); err == nil {
			rev = v.Revision
		}
	case lincheck.Release:
		var v *api.Subject
		if v, err = cl.Release(ctx, topology.KindDevice, in.Device); err == nil {
			rev = v.Revision
		}
	case lincheck.SetRisk:
		score := in.Risk % 101
		rev, err = cl.UpdateState(ctx, []raft.StateOp{{Subject: sub, Op: raft.OpSetRisk, Risk: &topology.Risk{Score: score,
			Signals: []topology.Signal{{Name: linRiskSignal, Score: score, Detail: strconv.Itoa(in.Risk)}}}}})
	case lincheck.Read:
		cl.MinRevision = topology.Revision(in.MinRevision)
		var v *api.Subject
		if v, err = cl.Subject(ctx, topology.KindDevice, in.Device); err == nil {
			call.Observed(linObserved(v), uint64(v.Revision))
			return nil
		}
	}
	if err != nil {
		call.Failed(err)
		return err
	}
	call.Ok(uint64(rev))
	return nil
}

// linObserved is the model's view of a device's record. A risk without the
// test's signal (which nothing else should write) becomes a value no write
// made, so that the check flags it.
func linObserved(v *api.Subject) lincheck.State {
	s := lincheck.State{Quarantined: v.Quarantined, Risk: lincheck.NoRisk}
	if st := v.State; st != nil {
		if st.Quarantine != nil {
			s.Reason = st.Quarantine.Reason
		}
		if r := st.Risk; r != nil {
			s.Risk = -2
			for _, sig := range r.Signals {
				if n, err := strconv.Atoi(sig.Detail); sig.Name == linRiskSignal && err == nil && n%101 == r.Score {
					s.Risk = n
				}
			}
		}
	}
	return s
}

// linErrors counts the clients' errors by kind.
type linErrors struct {
	mu       sync.Mutex
	byKind   map[string]int
	sample   map[string]string
	definite int // 4xx other than 408 and 429: refused, not indeterminate
	slow     []linSlowOp
}

// linSlowOp is an operation that took more than a second.
type linSlowOp struct {
	at, took int64 // on the recorder's clock
	member   string
	kind     lincheck.Kind
	err      error
}

func (e *linErrors) slowOp(op linSlowOp) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.slow = append(e.slow, op)
}

// slowIn summarises the slow operations that began in w, with their
// start relative to from.
func (e *linErrors) slowIn(w linWindow, from int64) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, op := range e.slow {
		if op.at < w.start || op.at > w.end {
			continue
		}
		how := "ok"
		if op.err != nil {
			how = linErrKind(op.err)
		}
		out = append(out, fmt.Sprintf("%s via %s at %s took %v (%s)", op.kind, op.member, linRel(op.at-from), linDur(op.took), how))
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

func (e *linErrors) add(k lincheck.Kind, err error) {
	kind := k.String() + ": " + linErrKind(err)
	var apiErr *api.Error
	errors.As(err, &apiErr)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.byKind[kind]++
	if _, ok := e.sample[kind]; !ok {
		e.sample[kind] = err.Error()
	}
	if apiErr != nil && apiErr.Status >= 400 && apiErr.Status < 500 && apiErr.Status != 408 && apiErr.Status != 429 {
		e.definite++
	}
}

// linErrKind classifies a client's error.
func linErrKind(err error) string {
	kind := "other"
	var apiErr *api.Error
	var netErr net.Error
	switch {
	case errors.As(err, &apiErr):
		kind = fmt.Sprintf("HTTP %d %s", apiErr.Status, apiErr.Code)
	case errors.Is(err, context.DeadlineExceeded):
		kind = "client timeout"
	case errors.Is(err, syscall.ECONNRESET):
		kind = "connection reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		kind = "connection refused"
	case strings.Contains(err.Error(), "EOF"):
		kind = "EOF"
	case errors.As(err, &netErr):
		kind = "network"
	}
	return kind
}

func (e *linErrors) log(t *testing.T) {
	e.mu.Lock()
	defer e.mu.Unlock()
	kinds := make([]string, 0, len(e.byKind))
	for k := range e.byKind {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		msg := e.sample[k]
		if len(msg) > 200 {
			msg = msg[:200] + "…"
		}
		t.Logf("  errors %-40s %4d  e.g. %s", k, e.byKind[k], msg)
	}
}

// linWindow is a span on the recorder's clock.
type linWindow struct{ start, end int64 }

// linFaultRun is one fault as it ran.
type linFaultRun struct {
	kind, detail string
	fault        linWindow // injected to healed
	settled      int64     // the end of its settling period
	until        int64     // when every member followed one leader again
	leaderAfter  string
	leaderBefore string
}

type linSchedule struct {
	t      *testing.T
	c      *harness.Cluster
	fn     *harness.FaultNet
	rec    *lincheck.Recorder
	watch  *linRaftWatch
	errs   *linErrors
	warmup linWindow
	runs   []linFaultRun
}

// run injects every fault in turn. A fault that cannot be set up (no
// agreed leader after the previous one) fails the test and ends the
// schedule; the history so far is still checked.
func (s *linSchedule) run() {
	faults := []struct {
		kind   string
		inject func(leader, f1, f2 string) (detail string, heal func() error, err error)
	}{
		{"leader isolated", func(l, f1, f2 string) (string, func() error, error) {
			s.fn.Isolate(l, f1, f2)
			return fmt.Sprintf("%s cut off from %s and %s both ways (clients still reach it)", l, f1, f2), s.healAll, nil
		}},
		{"follower isolated", func(l, f1, f2 string) (string, func() error, error) {
			s.fn.Isolate(f1, l, f2)
			return fmt.Sprintf("%s cut off from %s and %s both ways", f1, l, f2), s.healAll, nil
		}},
		{"one-way cut leader->follower", func(l, f1, f2 string) (string, func() error, error) {
			s.fn.Cut(l, f1)
			return fmt.Sprintf("%s -> %s cut, %s -> %s intact", l, f1, f1, l), s.healAll, nil
		}},
		{"slow, lossy link", func(l, f1, f2 string) (string, func() error, error) {
			// One rule per direction: delay one way, drop the other.
			s.fn.Delay(l, f1, 200*time.Millisecond)
			s.fn.Drop(f1, l, 0.05)
			return fmt.Sprintf("%s -> %s delayed 200ms, %s -> %s drops 5%% of chunks", l, f1, f1, l), s.healAll, nil
		}},
		{"leader paused", func(l, f1, f2 string) (string, func() error, error) {
			i := s.index(l)
			if err := s.c.Pause(i); err != nil {
				return "", nil, err
			}
			return fmt.Sprintf("SIGSTOP %s, SIGCONT after %v", l, linFault), func() error { return s.c.Resume(i) }, nil
		}},
		{"leader killed", func(l, f1, f2 string) (string, func() error, error) {
			i := s.index(l)
			if err := s.c.Kill(i); err != nil {
				return "", nil, err
			}
			return fmt.Sprintf("SIGKILL %s, restarted after %v", l, linFault), func() error { return s.c.Restart(i) }, nil
		}},
	}
	leader, err := s.c.Leader()
	if err != nil {
		s.t.Errorf("before the faults: %v", err)
		return
	}
	for k, f := range faults {
		fs := s.others(leader)
		if k%2 == 1 { // vary the follower a fault picks
			fs[0], fs[1] = fs[1], fs[0]
		}
		l := s.c.Member(leader).ID
		at := s.rec.Now()
		detail, heal, err := f.inject(l, fs[0], fs[1])
		if err != nil {
			s.t.Errorf("inject %q: %v", f.kind, err)
			return
		}
		time.Sleep(linFault)
		healErr := heal()
		healed := s.rec.Now()
		if healErr != nil {
			s.t.Errorf("heal %q: %v", f.kind, healErr)
		}
		time.Sleep(linSettle)
		settled := s.rec.Now()
		// Every member must follow one leader again before the next
		// fault (bounded by the harness's timeout).
		leader, err = s.c.Leader()
		r := linFaultRun{kind: f.kind, detail: detail, fault: linWindow{at, healed}, settled: settled, until: s.rec.Now(), leaderBefore: l}
		if err == nil {
			r.leaderAfter = s.c.Member(leader).ID
		}
		s.runs = append(s.runs, r)
		s.rec.Annotate("faults", at, healed, f.kind+": "+detail)
		s.t.Logf("fault %q: %s; healed after %v; every member followed %s %v after the heal",
			f.kind, detail, linDur(healed-at), r.leaderAfter, linDur(r.until-healed))
		if healErr != nil {
			return
		}
		if err != nil {
			s.t.Errorf("after %q: %v", f.kind, err)
			return
		}
	}
}

func (s *linSchedule) healAll() error { s.fn.HealAll(); return nil }

func (s *linSchedule) index(id string) int {
	for i := range s.c.Size() {
		if s.c.Member(i).ID == id {
			return i
		}
	}
	return -1
}

func (s *linSchedule) others(i int) []string {
	var out []string
	for j := range s.c.Size() {
		if j != i {
			out = append(out, s.c.Member(j).ID)
		}
	}
	return out
}

// describe lists the faults with their times on the history's clock.
func (s *linSchedule) describe() string {
	var b strings.Builder
	for _, r := range s.runs {
		fmt.Fprintf(&b, "\n  [%.3fs, %.3fs] %s: %s (settled until %.3fs, one leader again at %.3fs)",
			linSec(r.fault.start), linSec(r.fault.end), r.kind, r.detail, linSec(r.settled), linSec(r.until))
	}
	return b.String()
}

func linSec(ns int64) float64 { return float64(ns) / 1e9 }

// report logs, for the fault-free start and for each fault, the longest
// time without a write being acknowledged, through any member and through
// each one: during the fault, and from the fault until the end of its
// settling period.
func (s *linSchedule) report(ops []porcupine.Operation) {
	acks := map[string][]int64{} // by member, "" for any
	for _, op := range ops {
		if in, out := op.Input.(lincheck.Input), op.Output.(lincheck.Output); in.Kind.IsWrite() && !out.Indeterminate {
			m := op.Metadata.(lincheck.Meta).Member
			acks[""] = append(acks[""], op.Return)
			acks[m] = append(acks[m], op.Return)
		}
	}
	for _, a := range acks {
		slices.Sort(a)
	}
	gaps := func(w linWindow) string {
		g := linLongestGap(acks[""], w)
		out := fmt.Sprintf("any member %v from +%v (%d acks)", linDur(g.gap), linDur(g.from-w.start), g.n)
		for i := range s.c.Size() {
			id := s.c.Member(i).ID
			g := linLongestGap(acks[id], w)
			out += fmt.Sprintf("; via %s %v from +%v (%d)", id, linDur(g.gap), linDur(g.from-w.start), g.n)
		}
		return out
	}
	s.t.Logf("longest gap between acknowledged writes, fault-free %v: %s", linDur(s.warmup.end-s.warmup.start), gaps(s.warmup))
	for _, r := range s.runs {
		s.t.Logf("longest gap between acknowledged writes, %s (%s):\n    during the fault (%v): %s\n    until every member followed one leader again (%v): %s\n    raft: %s\n    operations over 1s (start relative to the fault): %s",
			r.kind, r.detail, linDur(r.fault.end-r.fault.start), gaps(r.fault), linDur(r.until-r.fault.start), gaps(linWindow{r.fault.start, r.until}),
			s.watch.describe(linWindow{r.fault.start, r.until}, r.leaderBefore), s.errs.slowIn(linWindow{r.fault.start - int64(linOpTimeout), r.until}, r.fault.start))
	}
}

type linGap struct {
	gap, from int64 // the longest gap and where it starts
	n         int   // acknowledgements in the linWindow
}

// linLongestGap is the longest span of w without an acknowledgement, w's
// ends counting as acknowledgements.
func linLongestGap(acks []int64, w linWindow) linGap {
	prev, best := w.start, linGap{from: w.start}
	for _, a := range acks {
		if a <= w.start || a > w.end {
			continue
		}
		best.n++
		if a-prev > best.gap {
			best.gap, best.from = a-prev, prev
		}
		prev = a
	}
	if w.end-prev > best.gap {
		best.gap, best.from = w.end-prev, prev
	}
	return best
}

func linDur(ns int64) time.Duration { return time.Duration(ns).Round(time.Millisecond) }

// linRel is an offset with its sign.
func linRel(ns int64) string {
	if ns < 0 {
		return "-" + linDur(-ns).String()
	}
	return "+" + linDur(ns).String()
}

// linRaftWatch polls every member's own raft status (GET /v1/cluster/self)
// every 100ms until ctx ends, in goroutines counted in wg, and keeps each
// change of its role, term or leader, so that the report can tell an
// election's length from the clients' view.
type linRaftWatch struct {
	mu     sync.Mutex
	events []linRaftEvent
}

type linRaftEvent struct {
	at                    int64
	member, state, leader string
	term                  uint64
}

func linWatchRaft(ctx context.Context, wg *sync.WaitGroup, c *harness.Cluster, rec *lincheck.Recorder) *linRaftWatch {
	w := &linRaftWatch{}
	for i := range c.Size() {
		wg.Go(func() {
			id := c.Member(i).ID
			var last linRaftEvent
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				st, err := c.Client(i).Self(qctx)
				cancel()
				ev := linRaftEvent{at: rec.Now(), member: id, state: "unanswered"}
				if err == nil {
					ev.state, ev.leader, ev.term = st.State, st.LeaderID, st.Term
				}
				if ev.state != last.state || ev.leader != last.leader || ev.term != last.term {
					w.mu.Lock()
					w.events = append(w.events, ev)
					w.mu.Unlock()
					last = ev
				}
			}
		})
	}
	return w
}

// describe summarises win: when a member other than old first reported
// leading, and every change seen.
func (w *linRaftWatch) describe(win linWindow, old string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	elected := "no other member led"
	var changes []string
	for _, ev := range w.events {
		if ev.at < win.start || ev.at > win.end {
			continue
		}
		if ev.state == "Leader" && ev.member != old && strings.HasPrefix(elected, "no") {
			elected = fmt.Sprintf("%s led from +%v (term %d)", ev.member, linDur(ev.at-win.start), ev.term)
		}
		s := ev.state
		if ev.state == "Follower" || ev.state == "Candidate" {
			s += " of " + cmp.Or(ev.leader, "nobody")
		}
		changes = append(changes, fmt.Sprintf("+%v %s %s t%d", linDur(ev.at-win.start), ev.member, s, ev.term))
	}
	return elected + "; changes: " + strings.Join(changes, ", ")
}
