package lincheck

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
)

// Recorder records a history of operations from concurrent clients. It is
// safe for concurrent use. Timestamps are nanoseconds since the Recorder
// was made, on the monotonic clock.
type Recorder struct {
	start  time.Time
	oracle atomic.Uint64 // highest revision any operation returned

	mu          sync.Mutex
	ops         []porcupine.Operation
	open        map[*Call]struct{}
	readsFailed int
	annotations []porcupine.Annotation
}

// NewRecorder starts an empty history.
func NewRecorder() *Recorder {
	return &Recorder{start: time.Now(), open: map[*Call]struct{}{}}
}

// Now is the recorder's clock: nanoseconds since it was made.
func (r *Recorder) Now() int64 { return time.Since(r.start).Nanoseconds() }

// Oracle is the highest revision any operation has returned so far.
func (r *Recorder) Oracle() uint64 { return r.oracle.Load() }

func (r *Recorder) raise(rev uint64) {
	for {
		cur := r.oracle.Load()
		if rev <= cur || r.oracle.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// Call is an operation in flight. Exactly one of its methods Ok, Observed
// or Failed ends it; ending it twice panics.
type Call struct {
	r      *Recorder
	client int
	member string
	in     Input
	call   int64
	done   atomic.Bool
}

// Begin records the invocation of an operation by client (a small integer
// from 0, one per concurrent client: porcupine draws one row per client) at
// member (for the report). For a Read it sets MinRevision from the oracle,
// after taking the invocation time (see the package documentation); send
// the read with Input().MinRevision.
func (r *Recorder) Begin(client int, member string, in Input) *Call {
	c := &Call{r: r, client: client, member: member, in: in}
	c.call = r.Now()
	if in.Kind == Read {
		c.in.MinRevision = r.Oracle()
	}
	r.mu.Lock()
	r.open[c] = struct{}{}
	r.mu.Unlock()
	return c
}

// Input is the operation's input (for a Read, with its MinRevision).
func (c *Call) Input() Input { return c.in }

func (c *Call) end(out Output, keep bool) {
	if !c.done.CompareAndSwap(false, true) {
		panic(fmt.Sprintf("lincheck: %s ended twice", Describe(c.in, out)))
	}
	var ret int64
	if !out.Indeterminate {
		c.r.raise(out.Revision) // before the return time: see the package documentation
		ret = c.r.Now()
	}
	r := c.r
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.open, c)
	if !keep {
		r.readsFailed++
		return
	}
	r.ops = append(r.ops, porcupine.Operation{ClientId: c.client, Input: c.in, Call: c.call, Output: out, Return: ret,
		Metadata: Meta{Member: c.member}})
}

// Ok records that a write was acknowledged at revision rev.
func (c *Call) Ok(rev uint64) {
	if !c.in.Kind.IsWrite() {
		panic("lincheck: Ok ends a write; a read ends with Observed")
	}
	c.end(Output{Revision: rev}, true)
}

// Observed records that a read returned state, read at revision rev.
func (c *Call) Observed(state State, rev uint64) {
	if c.in.Kind != Read {
		panic("lincheck: Observed ends a read")
	}
	c.end(Output{Revision: rev, State: state}, true)
}

// Failed records that the operation ended with err: a write becomes
// indeterminate, a read is left out of the history.
func (c *Call) Failed(err error) {
	msg := "failed"
	if err != nil {
		msg = err.Error()
	}
	c.end(Output{Indeterminate: true, Err: msg}, c.in.Kind.IsWrite())
}

// Annotate adds a labelled span (a fault, for instance) to the
// visualisation, from start to end on the recorder's clock (end 0: a
// point).
func (r *Recorder) Annotate(tag string, start, end int64, description string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.annotations = append(r.annotations, porcupine.Annotation{Tag: tag, Start: start, End: end, Description: description,
		BackgroundColor: "#fde2c8"})
}

// Operations returns the history: every ended operation, and every write
// still in flight as indeterminate. Indeterminate writes return after every
// other event of the history.
func (r *Recorder) Operations() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops := make([]porcupine.Operation, 0, len(r.ops)+len(r.open))
	ops = append(ops, r.ops...)
	for c := range r.open {
		if c.in.Kind.IsWrite() {
			ops = append(ops, porcupine.Operation{ClientId: c.client, Input: c.in, Call: c.call,
				Output: Output{Indeterminate: true, Err: "still in flight when the history ended"}, Metadata: Meta{Member: c.member}})
		}
	}
	var end int64
	for _, op := range ops {
		end = max(end, op.Call, op.Return)
	}
	for i := range ops {
		if ops[i].Output.(Output).Indeterminate {
			ops[i].Return = end + 1
		}
	}
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	return ops
}

// Stats counts a history's operations.
type Stats struct {
	// Acknowledged and Indeterminate count writes by kind; Reads counts
	// the reads that returned.
	Acknowledged  map[Kind]int
	Indeterminate map[Kind]int
	Reads         int
	// ReadsFailed is how many reads failed (and are not in the history).
	ReadsFailed int
}

// AcknowledgedWrites is the number of acknowledged writes of every kind.
func (s Stats) AcknowledgedWrites() int {
	n := 0
	for _, v := range s.Acknowledged {
		n += v
	}
	return n
}

// IndeterminateWrites is the number of indeterminate writes of every kind.
func (s Stats) IndeterminateWrites() int {
	n := 0
	for _, v := range s.Indeterminate {
		n += v
	}
	return n
}

func (s Stats) String() string {
	var parts []string
	for _, k := range Kinds {
		if k == Read {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d acknowledged + %d indeterminate", k, s.Acknowledged[k], s.Indeterminate[k]))
	}
	return fmt.Sprintf("writes: %s (total %d acknowledged, %d indeterminate); reads: %d returned, %d failed (left out)",
		strings.Join(parts, ", "), s.AcknowledgedWrites(), s.IndeterminateWrites(), s.Reads, s.ReadsFailed)
}

// Stats counts the operations recorded so far.
func (r *Recorder) Stats() Stats {
	ops := r.Operations()
	s := Stats{Acknowledged: map[Kind]int{}, Indeterminate: map[Kind]int{}}
	for _, op := range ops {
		in, out := op.Input.(Input), op.Output.(Output)
		switch {
		case in.Kind == Read:
			s.Reads++
		case out.Indeterminate:
			s.Indeterminate[in.Kind]++
		default:
			s.Acknowledged[in.Kind]++
		}
	}
	r.mu.Lock()
	s.ReadsFailed = r.readsFailed
	r.mu.Unlock()
	return s
}

// Check checks the history with porcupine for at most timeout (0: no
// limit); porcupine.Unknown means it ran out of time.
func (r *Recorder) Check(timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	return Check(r.Operations(), timeout)
}

// Check checks a history against Model.
func Check(ops []porcupine.Operation, timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	return porcupine.CheckOperationsVerbose(Model, ops, timeout)
}

// Visualize writes porcupine's HTML visualisation of a checked history,
// with the recorder's annotations, to path.
func (r *Recorder) Visualize(info porcupine.LinearizationInfo, path string) error {
	r.mu.Lock()
	info.AddAnnotations(r.annotations)
	r.mu.Unlock()
	return porcupine.VisualizePath(Model, info, path)
}

// explainTimeout bounds each device's check in Explain.
const explainTimeout = 20 * time.Second

// Explain describes, for every device whose history is not linearizable,
// how far a linearization got and the operations it could not place: the
// short account of a violation that goes with the visualisation.
func Explain(ops []porcupine.Operation) string {
	var b strings.Builder
	for _, part := range partition(ops) {
		res, info := porcupine.CheckOperationsVerbose(Model, part, explainTimeout)
		if res != porcupine.Illegal {
			continue
		}
		partials := info.PartialLinearizationsOperations()
		var longest []porcupine.Operation
		if len(partials) == 1 {
			for _, p := range partials[0] {
				if len(p) > len(longest) {
					longest = p
				}
			}
		}
		state := Initial
		placed := map[int64]bool{} // by call time and client: operations are unique by both
		for _, op := range longest {
			_, state = Step(state, op.Input.(Input), op.Output.(Output))
			placed[key(op)] = true
		}
		fmt.Fprintf(&b, "device %s: %d operations; the longest linearizable prefix has %d, ending in state {%s}",
			part[0].Input.(Input).Device, len(part), len(longest), state)
		if n := len(longest); n > 0 {
			last := longest[n-1]
			fmt.Fprintf(&b, " after %s", describeOp(last))
		}
		b.WriteString("\n  operations it could not place next (earliest first):\n")
		shown := 0
		for _, op := range part {
			if placed[key(op)] {
				continue
			}
			fmt.Fprintf(&b, "    %s\n", describeOp(op))
			if shown++; shown == 6 {
				break
			}
		}
	}
	return b.String()
}

func key(op porcupine.Operation) int64 { return op.Call*64 + int64(op.ClientId%64) }

func describeOp(op porcupine.Operation) string {
	in, out := op.Input.(Input), op.Output.(Output)
	s := fmt.Sprintf("client %d", op.ClientId)
	if m, ok := op.Metadata.(Meta); ok && m.Member != "" {
		s += " via " + m.Member
	}
	ret := "pending"
	if !out.Indeterminate {
		ret = fmt.Sprintf("%.3fs", float64(op.Return)/1e9)
	}
	return fmt.Sprintf("[%.3fs, %s] %s: %s", float64(op.Call)/1e9, ret, s, Describe(in, out))
}
