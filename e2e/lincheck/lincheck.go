// Package lincheck checks that histories of operations on Vigil's
// per-device runtime state (quarantine, release, risk writes and reads) are
// linearizable, with porcupine (github.com/anishathalye/porcupine).
//
// It is pure Go and knows nothing of processes or HTTP: a test records what
// its clients asked and what they were answered with a Recorder, then checks
// the history against Model.
//
// # The model
//
// Every device is an independent register (the history is partitioned by
// device) holding a State: whether the device is quarantined, the reason of
// the quarantine in force, and the risk the last risk write set. It starts
// clear: not quarantined, no reason, no risk (NoRisk). The operations are
// exactly what raft/fsm.go's applyOp does with one StateOp:
//
//   - Quarantine(reason): quarantined, Reason = reason (a quarantine of a
//     quarantined device replaces the reason); the risk is unchanged.
//   - Release: not quarantined, Reason = "", and the risk is removed
//     (Risk = NoRisk): Vigil treats a release as an operator's judgement that
//     the device is fine, so its risk starts again from nothing. A release
//     of a device that is not quarantined still clears its risk.
//   - SetRisk(v): Risk = v; the quarantine is unchanged (a risk write never
//     quarantines by itself: only the monitor turns a risk into a
//     quarantine, and then as a separate quarantine operation).
//   - Read: returns the whole State and changes nothing.
//
// Clients make every written value unique (a reason, a risk value), so that
// a read tells which write it saw. The model treats the values as opaque:
// how a risk value travels in Vigil's API (a score of 0 to 100 cannot be
// unique for long) is the caller's business.
//
// # Reads and the revision oracle
//
// A Vigil member answers a read from its own replica, which may lag the
// leader: a plain read is not linearizable (a follower can return a state
// older than a write that was acknowledged before the read began). With
// ?min_revision=N the member first waits (bounded) until it has applied
// revision N and then reads its replica at some revision S >= N. Revisions
// are raft log indexes, the same on every replica, and a replica only ever
// applies committed entries in log order, so the state at S is exactly the
// effect of every write committed at an index <= S.
//
// The Recorder keeps an oracle: the highest revision any operation has
// returned so far. A write returns the revision it committed at (for
// quarantine and release, the revision of the leader's replica once it had
// applied the write, which is at least that: it is committed too); a read
// returns the revision S it read at. Each read is issued with MinRevision =
// the oracle taken at the read's invocation. Then every write acknowledged
// before the read began committed at an index <= MinRevision <= S, and so
// does every write some earlier completed read saw. Ordering all operations
// by revision (a write at its commit index, a read at S after the write of
// S) is then a linearization that respects real time: if operation a
// completed before operation b began, rev(a) <= MinRevision(b) <= rev(b), and
// a write b proposed after a completed commits at a higher index than
// anything a saw. A history that still fails the check is a real violation:
// a lost or reordered acknowledged write, a read of a state that never
// existed, or a stale read despite min_revision.
//
// Feeding the reads' revisions into the oracle matters: with writes alone, a
// read at an up-to-date member may see a write that is not yet acknowledged
// and a later read at a lagging member (with the same, older MinRevision)
// may not, which is a correct Vigil behaviour and not linearizable.
//
// The Recorder makes the oracle sound with respect to its own clock: an
// operation's completion raises the oracle before its return time is taken,
// and a read takes its invocation time before it reads the oracle.
//
// # Indeterminate outcomes
//
// A write that failed (a timeout, a refused or reset connection, a 503 or
// 504, any error) may or may not have been applied, possibly later: it is
// recorded as still pending at the end of the history (its return time is
// after every other event), so porcupine may linearize it anywhere after its
// invocation, or never observe it. A read that failed tells nothing and is
// left out of the history.
package lincheck

import (
	"fmt"
	"hash/maphash"
	"sort"
	"strings"

	"github.com/anishathalye/porcupine"
)

// NoRisk is State.Risk when the device has no risk recorded.
const NoRisk = -1

// State is one device's runtime state as the model sees it.
type State struct {
	Quarantined bool
	// Reason is the reason of the quarantine in force; "" when not
	// quarantined.
	Reason string
	// Risk is the value of the last risk write, NoRisk when none (initially
	// and after a release).
	Risk int
}

// Initial is every device's state before any operation.
var Initial = State{Risk: NoRisk}

func (s State) String() string {
	var b strings.Builder
	if s.Quarantined {
		fmt.Fprintf(&b, "quarantined %q", s.Reason)
	} else {
		b.WriteString("clear")
		if s.Reason != "" { // not a state Vigil can be in; show it
			fmt.Fprintf(&b, " (reason %q)", s.Reason)
		}
	}
	if s.Risk == NoRisk {
		b.WriteString(", no risk")
	} else {
		fmt.Fprintf(&b, ", risk %d", s.Risk)
	}
	return b.String()
}

// Kind is an operation's kind.
type Kind uint8

// The operations.
const (
	Quarantine Kind = iota + 1
	Release
	SetRisk
	Read
)

// Kinds lists every kind, in order.
var Kinds = []Kind{Quarantine, Release, SetRisk, Read}

func (k Kind) String() string {
	switch k {
	case Quarantine:
		return "quarantine"
	case Release:
		return "release"
	case SetRisk:
		return "risk"
	case Read:
		return "read"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// IsWrite reports whether the kind changes state.
func (k Kind) IsWrite() bool { return k == Quarantine || k == Release || k == SetRisk }

// Input is what a client asked.
type Input struct {
	Kind   Kind
	Device string
	Reason string // Quarantine
	Risk   int    // SetRisk
	// MinRevision is what a Read was issued with (Recorder.Begin sets it).
	MinRevision uint64
}

// Output is what a client was answered.
type Output struct {
	// Indeterminate marks a write that failed: it may or may not have
	// taken effect. Err says how it failed.
	Indeterminate bool
	Err           string
	// Revision is the revision the write returned or the read was served
	// at.
	Revision uint64
	// State is what a Read observed.
	State State
}

// Meta is an operation's metadata, for the visualisation: which member
// answered.
type Meta struct {
	Member string
}

// Model is the linearizability model of a set of devices' runtime states.
var Model = porcupine.Model{
	Partition: partition,
	PartitionEvent: func(history []porcupine.Event) [][]porcupine.Event {
		byDevice := map[string][]porcupine.Event{}
		devOf := map[int]string{}
		for _, e := range history {
			if e.Kind == porcupine.CallEvent {
				devOf[e.Id] = e.Value.(Input).Device
			}
			d := devOf[e.Id]
			byDevice[d] = append(byDevice[d], e)
		}
		return sortedValues(byDevice)
	},
	Init: func() any { return Initial },
	Step: func(state, input, output any) (bool, any) {
		return Step(state.(State), input.(Input), output.(Output))
	},
	Equal: func(a, b any) bool { return a.(State) == b.(State) },
	Hash: func(state any) uint64 {
		s := state.(State)
		h := maphash.String(hashSeed, s.Reason)
		h ^= uint64(s.Risk+2) * 0x9e3779b97f4a7c15
		if s.Quarantined {
			h ^= 0xc2b2ae3d27d4eb4f
		}
		return h
	},
	DescribeOperation: func(input, output any) string {
		return Describe(input.(Input), output.(Output))
	},
	DescribeState: func(state any) string { return state.(State).String() },
	DescribeOperationMetadata: func(info any) string {
		if m, ok := info.(Meta); ok && m.Member != "" {
			return "answered by " + m.Member
		}
		return ""
	},
}

var hashSeed = maphash.MakeSeed()

// Step is the model's sequential specification of one device: whether an
// operation with this input can answer output in state s, and the state
// after it.
func Step(s State, in Input, out Output) (bool, State) {
	switch in.Kind {
	case Quarantine:
		s.Quarantined, s.Reason = true, in.Reason
		return true, s
	case Release:
		return true, Initial
	case SetRisk:
		s.Risk = in.Risk
		return true, s
	case Read:
		return out.State == s, s
	}
	return false, s
}

// Describe renders an operation for people.
func Describe(in Input, out Output) string {
	var call string
	switch in.Kind {
	case Quarantine:
		call = fmt.Sprintf("quarantine(%s, %q)", in.Device, in.Reason)
	case Release:
		call = fmt.Sprintf("release(%s)", in.Device)
	case SetRisk:
		call = fmt.Sprintf("risk(%s, %d)", in.Device, in.Risk)
	case Read:
		call = fmt.Sprintf("read(%s, min_revision %d)", in.Device, in.MinRevision)
	default:
		call = fmt.Sprintf("%v(%s)", in.Kind, in.Device)
	}
	switch {
	case out.Indeterminate:
		return call + " -> ? (" + out.Err + ")"
	case in.Kind == Read:
		return fmt.Sprintf("%s -> {%s} at revision %d", call, out.State, out.Revision)
	default:
		return fmt.Sprintf("%s -> ok at revision %d", call, out.Revision)
	}
}

func partition(history []porcupine.Operation) [][]porcupine.Operation {
	byDevice := map[string][]porcupine.Operation{}
	for _, op := range history {
		d := op.Input.(Input).Device
		byDevice[d] = append(byDevice[d], op)
	}
	return sortedValues(byDevice)
}

// sortedValues returns m's values in key order, so that partitions (and the
// visualisation) come out the same way every time.
func sortedValues[T any](m map[string][]T) [][]T {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([][]T, 0, len(keys))
	for _, k := range keys {
		out = append(out, m[k])
	}
	return out
}
