package authz

import (
	"fmt"
	"io"
	"slices"
	"time"
)

// Checkpoint is a member's decision-log head as the cluster recorded it:
// the seq and hash of a line that was in the member's log file at Time.
// The member signs it and proposes it through Raft (node/, raft/); the
// verifier checks a log file against the checkpoints of its member, so a
// file cut short or rolled back to an earlier state is found even though
// nothing in the file itself vouches for its last lines.
type Checkpoint struct {
	Node string    `json:"node"`
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time"`
}

// Head is the seq and hash of the last line the log has written to its
// file (flushed; seq 0 and 64 zeros before the first). It is safe to call
// at any time; Run updates it after each flush.
func (l *DecisionLog) Head() (seq uint64, hash string) {
	h := l.head.Load()
	if h == nil {
		return 0, zeroChainHash
	}
	return h.seq, h.hash
}

// headMark is a flushed line.
type headMark struct {
	seq  uint64
	hash string
}

// CheckpointProblem is a checkpoint that the file does not match.
type CheckpointProblem struct {
	Checkpoint Checkpoint
	// Detail says what is wrong: the file ends before the checkpoint's seq
	// (entries missing), or holds another line at that seq (rewritten or
	// rolled back).
	Detail string
}

// VerifyDecisionLogAgainst verifies the chain as VerifyDecisionLog does and
// then checks that every checkpoint is in the file: the line with the
// checkpoint's seq exists and has its hash. cps are the checkpoints of the
// member that wrote the file; the caller picks them. It returns the report, with the checkpoints
// checked and the problems found, and the chain's error if the chain is
// broken (checkpoints are then checked only up to the break).
func VerifyDecisionLogAgainst(r io.Reader, cps []Checkpoint) (VerifyReport, error) {
	want := map[uint64][]Checkpoint{}
	for _, cp := range cps {
		want[cp.Seq] = append(want[cp.Seq], cp)
	}
	found := map[uint64]string{}
	rep, err := verifyDecisionLog(r, func(seq uint64, hash string) {
		if _, ok := want[seq]; ok {
			found[seq] = hash
		}
	})
	for _, seq := range slices.Sorted(mapsKeysU(want)) {
		for _, cp := range want[seq] {
			rep.CheckpointsChecked++
			h, ok := found[seq]
			switch {
			case !ok && seq > rep.Seq && err == nil:
				rep.CheckpointProblems = append(rep.CheckpointProblems, CheckpointProblem{cp, fmt.Sprintf(
					"the cluster recorded seq %d at %s, but the file ends at seq %d: %d entr%s missing from its end (cut short or rolled back)",
					cp.Seq, cp.Time.UTC().Format(time.RFC3339), rep.Seq, cp.Seq-rep.Seq, plural(cp.Seq-rep.Seq, "y is", "ies are"))})
			case !ok && err != nil:
				// Past the break: the chain error already says the file is damaged.
			case !ok:
				rep.CheckpointProblems = append(rep.CheckpointProblems, CheckpointProblem{cp, fmt.Sprintf(
					"the cluster recorded seq %d at %s, and the file has no such entry", cp.Seq, cp.Time.UTC().Format(time.RFC3339))})
			case h != cp.Hash:
				rep.CheckpointProblems = append(rep.CheckpointProblems, CheckpointProblem{cp, fmt.Sprintf(
					"the cluster recorded seq %d at %s with hash %s, but the file's line with that seq hashes to %s (rewritten, or rolled back and written again)",
					cp.Seq, cp.Time.UTC().Format(time.RFC3339), cp.Hash, h)})
			}
		}
	}
	return rep, err
}

func plural(n uint64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func mapsKeysU[V any](m map[uint64]V) func(func(uint64) bool) {
	return func(yield func(uint64) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
