package lincheck

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// pending is the return time given to indeterminate writes in the
// synthetic histories: after everything else.
const pending = 1_000_000

type hist []porcupine.Operation

func (h *hist) add(client int, call, ret int64, in Input, out Output) {
	if out.Indeterminate {
		ret = pending
	}
	*h = append(*h, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
}

func q(dev, reason string) Input { return Input{Kind: Quarantine, Device: dev, Reason: reason} }
func rel(dev string) Input       { return Input{Kind: Release, Device: dev} }
func risk(dev string, v int) Input {
	return Input{Kind: SetRisk, Device: dev, Risk: v}
}
func read(dev string) Input { return Input{Kind: Read, Device: dev} }

var (
	ok    = Output{Revision: 1}
	maybe = Output{Indeterminate: true, Err: "timeout"}
)

func saw(s State) Output { return Output{Revision: 1, State: s} }

var clear = Initial

func quarantined(reason string, r int) State {
	return State{Quarantined: true, Reason: reason, Risk: r}
}
func atRisk(r int) State { return State{Risk: r} }

func check(t *testing.T, h hist, want porcupine.CheckResult) {
	t.Helper()
	got, _ := Check(h, 10*time.Second)
	if got != want {
		t.Fatalf("check: got %s, want %s\n%s", got, want, Explain(h))
	}
}

func TestLinearizable(t *testing.T) {
	tests := []struct {
		name string
		h    func(h *hist)
	}{
		{"empty", func(h *hist) {}},
		{"sequential", func(h *hist) {
			h.add(0, 0, 10, q("d1", "a"), ok)
			h.add(0, 20, 30, read("d1"), saw(quarantined("a", NoRisk)))
			h.add(0, 40, 50, risk("d1", 7), ok)
			h.add(0, 60, 70, read("d1"), saw(quarantined("a", 7)))
			h.add(0, 80, 90, rel("d1"), ok)
			h.add(0, 100, 110, read("d1"), saw(clear))
		}},
		{"concurrent overlapping writes, reads during them seeing either", func(h *hist) {
			h.add(0, 0, 100, q("d1", "a"), ok)
			h.add(1, 50, 150, q("d1", "b"), ok)
			h.add(2, 10, 20, read("d1"), saw(clear))
			h.add(3, 60, 70, read("d1"), saw(quarantined("b", NoRisk)))
			h.add(2, 80, 90, read("d1"), saw(quarantined("a", NoRisk))) // a after b: both still running
			h.add(3, 160, 170, read("d1"), saw(quarantined("a", NoRisk)))
		}},
		{"concurrent writes, the other order", func(h *hist) {
			h.add(0, 0, 100, q("d1", "a"), ok)
			h.add(1, 50, 150, q("d1", "b"), ok)
			h.add(2, 160, 170, read("d1"), saw(quarantined("b", NoRisk)))
		}},
		{"a read concurrent with a release may see the quarantine or not", func(h *hist) {
			h.add(0, 0, 10, q("d1", "a"), ok)
			h.add(1, 20, 100, rel("d1"), ok)
			h.add(2, 30, 40, read("d1"), saw(quarantined("a", NoRisk)))
			h.add(3, 50, 60, read("d1"), saw(clear))
		}},
		{"a quarantine keeps the risk", func(h *hist) {
			h.add(0, 0, 10, risk("d1", 40), ok)
			h.add(0, 20, 30, q("d1", "a"), ok)
			h.add(0, 40, 50, read("d1"), saw(quarantined("a", 40)))
			h.add(0, 60, 70, risk("d1", 41), ok)
			h.add(0, 80, 90, read("d1"), saw(quarantined("a", 41)))
		}},
		{"a release clears the risk, even without a quarantine", func(h *hist) {
			h.add(0, 0, 10, risk("d1", 40), ok)
			h.add(0, 20, 30, rel("d1"), ok)
			h.add(0, 40, 50, read("d1"), saw(clear))
		}},
		{"a second quarantine replaces the reason", func(h *hist) {
			h.add(0, 0, 10, q("d1", "a"), ok)
			h.add(0, 20, 30, q("d1", "b"), ok)
			h.add(0, 40, 50, read("d1"), saw(quarantined("b", NoRisk)))
		}},
		{"devices are independent", func(h *hist) {
			h.add(0, 0, 10, q("d1", "a"), ok)
			h.add(1, 5, 15, risk("d2", 3), ok)
			h.add(0, 20, 30, read("d2"), saw(atRisk(3)))
			h.add(1, 20, 30, read("d1"), saw(quarantined("a", NoRisk)))
		}},
		{"an indeterminate write seen later", func(h *hist) {
			h.add(0, 0, 0, q("d1", "a"), maybe)
			h.add(1, 20, 30, read("d1"), saw(clear))
			h.add(1, 40, 50, read("d1"), saw(quarantined("a", NoRisk)))
			h.add(1, 60, 70, read("d1"), saw(quarantined("a", NoRisk)))
		}},
		{"an indeterminate write never seen", func(h *hist) {
			h.add(0, 0, 0, q("d1", "a"), maybe)
			h.add(1, 20, 30, read("d1"), saw(clear))
			h.add(1, 40, 50, risk("d1", 9), ok)
			h.add(1, 60, 70, read("d1"), saw(atRisk(9)))
		}},
		{"an indeterminate write applied after later acknowledged ones", func(h *hist) {
			h.add(0, 0, 0, risk("d1", 1), maybe)
			h.add(1, 20, 30, risk("d1", 2), ok)
			h.add(1, 40, 50, read("d1"), saw(atRisk(2)))
			h.add(1, 60, 70, read("d1"), saw(atRisk(1))) // a retry that landed late
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h hist
			tt.h(&h)
			check(t, h, porcupine.Ok)
		})
	}
}

func TestNotLinearizable(t *testing.T) {
	tests := []struct {
		name string
		h    func(h *hist)
	}{
		{"a read of a value overwritten before it began", func(h *hist) {
			h.add(0, 0, 10, q("d1", "a"), ok)
			h.add(0, 20, 30, q("d1", "b"), ok)
			h.add(1, 40, 50, read("d1"), saw(quarantined("a", NoRisk)))
		}},
		{"a stale read after an acknowledged quarantine (fail-open)", func(h *hist) {
			h.add(0, 0, 10, q("d1", "a"), ok)
			h.add(1, 20, 30, read("d1"), saw(clear))
		}},
		{"a stale read after an acknowledged release (a device kept out)", func(h *hist) {
			h.add(0, 0, 10, q("d1", "a"), ok)
			h.add(0, 20, 30, rel("d1"), ok)
			h.add(1, 40, 50, read("d1"), saw(quarantined("a", NoRisk)))
		}},
		{"a lost acknowledged write", func(h *hist) {
			h.add(0, 0, 10, q("d1", "a"), ok)
			h.add(1, 20, 30, risk("d1", 3), ok)
			h.add(2, 40, 50, read("d1"), saw(atRisk(3)))
		}},
		{"reads going back in time", func(h *hist) {
			h.add(0, 0, 100, q("d1", "a"), ok)
			h.add(1, 10, 20, read("d1"), saw(quarantined("a", NoRisk)))
			h.add(2, 30, 40, read("d1"), saw(clear))
		}},
		{"a read of a value nobody wrote", func(h *hist) {
			h.add(0, 0, 10, q("d1", "a"), ok)
			h.add(1, 20, 30, read("d1"), saw(quarantined("z", NoRisk)))
		}},
		{"a release that kept the risk", func(h *hist) {
			h.add(0, 0, 10, risk("d1", 5), ok)
			h.add(0, 20, 30, q("d1", "a"), ok)
			h.add(0, 40, 50, rel("d1"), ok)
			h.add(1, 60, 70, read("d1"), saw(atRisk(5)))
		}},
		{"an indeterminate write seen, then gone", func(h *hist) {
			h.add(0, 0, 0, q("d1", "a"), maybe)
			h.add(1, 20, 30, read("d1"), saw(quarantined("a", NoRisk)))
			h.add(1, 40, 50, read("d1"), saw(clear))
		}},
		{"a violation on one device among clean ones", func(h *hist) {
			for i := range 5 {
				d := fmt.Sprintf("d%d", i)
				h.add(i, 0, 10, q(d, "a"+d), ok)
				h.add(i, 20, 30, read(d), saw(quarantined("a"+d, NoRisk)))
			}
			h.add(9, 40, 50, read("d3"), saw(clear))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h hist
			tt.h(&h)
			check(t, h, porcupine.Illegal)
			if e := Explain(h); !strings.Contains(e, "device d") {
				t.Errorf("Explain names no device:\n%s", e)
			}
		})
	}
}

func TestExplainAndVisualize(t *testing.T) {
	r := NewRecorder()
	w := r.Begin(0, "n1", q("d1", "a"))
	w.Ok(10)
	rd := r.Begin(1, "n2", read("d1"))
	rd.Observed(clear, 10) // a fail-open: the quarantine acknowledged, the read misses it
	r.Annotate("faults", 0, r.Now(), "n1 isolated")
	res, info := r.Check(10 * time.Second)
	if res != porcupine.Illegal {
		t.Fatalf("check: %s, want Illegal", res)
	}
	e := Explain(r.Operations())
	for _, want := range []string{"device d1", `quarantine(d1, "a")`, "via n2", "read(d1, min_revision 10) -> {clear, no risk}"} {
		if !strings.Contains(e, want) {
			t.Errorf("Explain lacks %q:\n%s", want, e)
		}
	}
	path := filepath.Join(t.TempDir(), "history.html")
	if err := r.Visualize(info, path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "n1 isolated") || !strings.Contains(string(data), "read(d1") {
		t.Errorf("the visualisation lacks the annotation or the operations (%d bytes)", len(data))
	}
}

func TestRecorder(t *testing.T) {
	r := NewRecorder()
	if got := r.Begin(0, "n1", read("d1")).Input().MinRevision; got != 0 {
		t.Errorf("first read's min revision %d, want 0", got)
	}
	w := r.Begin(1, "n1", q("d1", "a"))
	w.Ok(7)
	if got := r.Begin(2, "n2", read("d1")).Input().MinRevision; got != 7 {
		t.Errorf("min revision after a write acknowledged at 7: %d", got)
	}
	rd := r.Begin(3, "n3", read("d1"))
	rd.Observed(quarantined("a", NoRisk), 9) // a read at a replica ahead raises the oracle too
	if got := r.Begin(4, "n2", read("d1")).Input().MinRevision; got != 9 {
		t.Errorf("min revision after a read at 9: %d", got)
	}
	old := r.Begin(5, "n1", risk("d1", 1))
	old.Ok(3) // revisions below the oracle never lower it
	if got := r.Oracle(); got != 9 {
		t.Errorf("oracle %d, want 9", got)
	}

	failedRead := r.Begin(6, "n1", read("d1"))
	failedRead.Failed(errors.New("504"))
	failedWrite := r.Begin(7, "n1", rel("d1"))
	failedWrite.Failed(errors.New("connection reset"))
	r.Begin(8, "n1", risk("d1", 2)) // still in flight
	late := r.Begin(9, "n1", read("d1"))
	late.Observed(quarantined("a", 1), 9)

	ops := r.Operations()
	var last int64
	for _, op := range ops {
		if !op.Output.(Output).Indeterminate {
			last = max(last, op.Return)
		}
	}
	var indeterminate []string
	for i, op := range ops {
		if i > 0 && op.Call < ops[i-1].Call {
			t.Errorf("operations not in invocation order")
		}
		if op.Output.(Output).Indeterminate {
			indeterminate = append(indeterminate, op.Input.(Input).Kind.String())
			if op.Return <= last {
				t.Errorf("indeterminate %v returns at %d, not after the history's end %d", op.Input, op.Return, last)
			}
		}
	}
	if len(indeterminate) != 2 {
		t.Errorf("indeterminate writes: %v, want the release that failed and the risk in flight", indeterminate)
	}
	st := r.Stats()
	if st.Reads != 2 || st.ReadsFailed != 1 || st.AcknowledgedWrites() != 2 || st.IndeterminateWrites() != 2 ||
		st.Indeterminate[Release] != 1 || st.Indeterminate[SetRisk] != 1 {
		t.Errorf("stats: %s", st)
	}
	// Four reads never ended: they are not part of the history.
	if len(ops) != 6 {
		t.Errorf("%d operations, want 6", len(ops))
	}
	if res, _ := r.Check(10 * time.Second); res != porcupine.Ok {
		t.Errorf("check: %s\n%s", res, Explain(ops))
	}

	func() {
		defer func() {
			if recover() == nil {
				t.Error("ending a call twice did not panic")
			}
		}()
		w.Ok(8)
	}()
}

// store is an in-memory linearizable implementation of the model with
// revisions: a leader that commits under a lock, and replicas that lag it
// but honour min_revision.
type store struct {
	mu      sync.Mutex
	rev     uint64
	history []map[string]State // state after each revision, index = revision
}

func newStore() *store { return &store{history: []map[string]State{{}}} }

func (s *store) write(in Input) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.history[s.rev]
	next := make(map[string]State, len(prev)+1)
	for k, v := range prev {
		next[k] = v
	}
	cur, ok := prev[in.Device]
	if !ok {
		cur = Initial
	}
	_, next[in.Device] = Step(cur, in, Output{})
	s.rev++
	s.history = append(s.history, next)
	return s.rev
}

// read answers from a replica lagging by up to lag revisions, but never
// below min.
func (s *store) read(dev string, min uint64, lag int) (State, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rev := s.rev - uint64(lag)
	if lag > int(s.rev) {
		rev = 0
	}
	rev = max(rev, min)
	st, ok := s.history[rev][dev]
	if !ok {
		st = Initial
	}
	return st, rev
}

// TestRecorderConcurrent drives a correct store from concurrent clients
// through the recorder (with -race, it checks the recorder is safe to
// share); whatever the scheduling, the history must check.
func TestRecorderConcurrent(t *testing.T) {
	s, r := newStore(), NewRecorder()
	var wg sync.WaitGroup
	for c := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(1, uint64(c)))
			for i := range 200 {
				clientStep(s, r, rng, c, i, true)
			}
		}()
	}
	wg.Wait()
	if res, _ := r.Check(20 * time.Second); res != porcupine.Ok {
		t.Fatalf("a correct store: %s\n%s", res, Explain(r.Operations()))
	}
	if st := r.Stats(); st.Reads == 0 || st.AcknowledgedWrites() == 0 || st.IndeterminateWrites() == 0 {
		t.Errorf("a trivial history: %s", st)
	}
}

// TestStaleReplicaCaught runs the same clients one operation at a time
// (deterministically) against replicas that ignore min_revision: their
// stale reads must be caught.
func TestStaleReplicaCaught(t *testing.T) {
	s, r := newStore(), NewRecorder()
	rngs := make([]*rand.Rand, 6)
	for c := range rngs {
		rngs[c] = rand.New(rand.NewPCG(2, uint64(c)))
	}
	for i := range 100 {
		for c, rng := range rngs {
			clientStep(s, r, rng, c, i, false)
		}
	}
	if res, _ := r.Check(20 * time.Second); res != porcupine.Illegal {
		t.Fatalf("replicas ignoring min_revision: %s, want Illegal", res)
	}
}

var devices = []string{"d1", "d2", "d3"}

// clientStep is one random operation of client c against s.
func clientStep(s *store, r *Recorder, rng *rand.Rand, c, i int, honourMin bool) {
	dev := devices[rng.IntN(len(devices))]
	var in Input
	switch rng.IntN(4) {
	case 0:
		in = q(dev, fmt.Sprintf("c%d-%d", c, i))
	case 1:
		in = rel(dev)
	case 2:
		in = risk(dev, c*1000+i)
	default:
		in = read(dev)
	}
	call := r.Begin(c, fmt.Sprintf("n%d", c%3+1), in)
	switch {
	case in.Kind == Read:
		min := call.Input().MinRevision
		if !honourMin {
			min = 0
		}
		st, rev := s.read(dev, min, rng.IntN(5))
		call.Observed(st, rev)
	case rng.IntN(20) == 0: // lost before the leader: never applied
		call.Failed(errors.New("connection refused"))
	case rng.IntN(20) == 0: // applied, but the answer was lost
		s.write(in)
		call.Failed(errors.New("timeout"))
	default:
		call.Ok(s.write(in))
	}
}
