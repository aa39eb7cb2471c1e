package raft

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// Decision-log checkpoints
//
// Every member anchors its decision log in the replicated state: it signs
// its log's head (the seq and hash of the last line written) with its audit
// key, an ed25519 key registered as Member.AuditKey, and proposes it as a
// cmdCheckpoint. A verifier then checks a log file against the checkpoints
// of its member, so that a file cut short or rolled back is found.
//
// The signed bytes are exactly (CheckpointSignedBytes):
//
//	"vigil decision-log checkpoint v1\n" + node + "\n" + seq + "\n" + hash + "\n" + unixNanos
//
// with seq and unixNanos in decimal, hash the 64 lower-case hex digits of
// the line's SHA-256, and no "\n" at the end.
//
// The state machine records a checkpoint only if the member is registered
// with an audit key, the signature verifies under that key, seq is from 1,
// and, against the member's latest checkpoint under the same key, seq does
// not go back and the same seq does not come with another hash (a log
// rolled back or rewritten); a checkpoint equal to the latest changes
// nothing. It keeps per member at most maxCheckpoints, thinning the older
// ones so that they stay spread over the log (checkpointLog.add).

// maxCheckpoints bounds the checkpoints kept per member.
const maxCheckpoints = 64

// checkpointDomain starts the signed bytes of every checkpoint.
const checkpointDomain = "vigil decision-log checkpoint v1\n"

// SignedCheckpoint is a member's decision-log head, signed by the member.
type SignedCheckpoint struct {
	Node string    `json:"node"`
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"` // hex SHA-256 of the line with that seq
	Time time.Time `json:"time"` // when the member read its head
	// Signature is the base64 ed25519 signature of CheckpointSignedBytes
	// by the member's audit key.
	Signature string `json:"signature"`
}

// RecordedCheckpoint is a checkpoint as the cluster recorded it, with the
// audit key it was verified with (a member whose key changed has
// checkpoints under its earlier keys too).
type RecordedCheckpoint struct {
	SignedCheckpoint
	AuditKey string `json:"auditKey"`
}

// CheckpointSignedBytes is what a member signs for a checkpoint; see the
// top of this file.
func CheckpointSignedBytes(node string, seq uint64, hash string, t time.Time) []byte {
	b := make([]byte, 0, len(checkpointDomain)+len(node)+len(hash)+48)
	b = append(b, checkpointDomain...)
	b = append(append(b, node...), '\n')
	b = append(strconv.AppendUint(b, seq, 10), '\n')
	b = append(append(b, hash...), '\n')
	return strconv.AppendInt(b, t.UnixNano(), 10)
}

// SignCheckpoint fills in cp.Signature with key.
func SignCheckpoint(key ed25519.PrivateKey, cp *SignedCheckpoint) {
	sig := ed25519.Sign(key, CheckpointSignedBytes(cp.Node, cp.Seq, cp.Hash, cp.Time))
	cp.Signature = base64.StdEncoding.EncodeToString(sig)
}

// EncodeAuditKey is the Member.AuditKey form of a public key: standard
// base64 of its 32 bytes.
func EncodeAuditKey(pub ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(pub) }

// ParseAuditKey reads a Member.AuditKey.
func ParseAuditKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("audit key is not the base64 of a %d-byte ed25519 public key", ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// VerifyCheckpoint checks cp's signature under auditKey (Member.AuditKey).
func VerifyCheckpoint(auditKey string, cp SignedCheckpoint) error {
	pub, err := ParseAuditKey(auditKey)
	if err != nil {
		return err
	}
	sig, err := base64.StdEncoding.DecodeString(cp.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return errors.New("signature is not the base64 of an ed25519 signature")
	}
	if !ed25519.Verify(pub, CheckpointSignedBytes(cp.Node, cp.Seq, cp.Hash, cp.Time), sig) {
		return fmt.Errorf("signature does not verify under member %s's audit key", cp.Node)
	}
	return nil
}

// checkCheckpoint refuses what no replica could record, before it is
// proposed: everything but the signature, the key and the history.
func checkCheckpoint(cp SignedCheckpoint) error {
	switch {
	case !ValidMemberID(cp.Node):
		return fmt.Errorf("checkpoint names no valid member (%q)", cp.Node)
	case cp.Seq == 0:
		return errors.New("checkpoint seq must be from 1")
	case !isHexHash(cp.Hash):
		return errors.New("checkpoint hash must be 64 lower-case hex digits")
	case cp.Time.IsZero():
		return errors.New("checkpoint needs a time")
	}
	return nil
}

func isHexHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// checkpointLog is one member's recorded checkpoints, oldest first. A
// slice is never modified once published: add returns a new one, so that
// snapshots and readers may keep it.
type checkpointLog []RecordedCheckpoint

// latest returns the member's latest checkpoint under key.
func (l checkpointLog) latest(key string) (RecordedCheckpoint, bool) {
	for i := len(l) - 1; i >= 0; i-- {
		if l[i].AuditKey == key {
			return l[i], true
		}
	}
	return RecordedCheckpoint{}, false
}

// add returns the log with c appended, thinned to maxCheckpoints. The one
// dropped is, among the entries between two of the same audit key, the one
// whose removal leaves the smallest seq gap between its neighbours (the
// oldest on a tie): dense recent checkpoints thin out first, the survivors
// stay spread over the whole log, and the first and last checkpoint under
// each key stay. With no such entry the oldest is dropped.
func (l checkpointLog) add(c RecordedCheckpoint) checkpointLog {
	out := append(slices.Clip(l), c)
	for len(out) > maxCheckpoints {
		drop, best := 0, uint64(0)
		for i := 1; i < len(out)-1; i++ {
			if out[i-1].AuditKey != out[i].AuditKey || out[i+1].AuditKey != out[i].AuditKey {
				continue
			}
			if gap := out[i+1].Seq - out[i-1].Seq; drop == 0 || gap < best {
				drop, best = i, gap
			}
		}
		out = slices.Delete(out, drop, drop+1)
	}
	return out
}

// applyCheckpoint records a member's checkpoint; see the top of this file.
func (f *fsm) applyCheckpoint(cp SignedCheckpoint) Result {
	rev := f.current().Revision()
	if err := checkCheckpoint(cp); err != nil {
		return rejected(rev, "%v", err)
	}
	m, ok := f.members[cp.Node]
	if !ok {
		return rejected(rev, "checkpoint of member %s: no such member is registered", cp.Node)
	}
	if m.AuditKey == "" {
		return rejected(rev, "checkpoint of member %s: the member registered no audit key", cp.Node)
	}
	if err := VerifyCheckpoint(m.AuditKey, cp); err != nil {
		return rejected(rev, "checkpoint of member %s at seq %d: %v", cp.Node, cp.Seq, err)
	}
	log := f.checkpoints[cp.Node]
	if last, ok := log.latest(m.AuditKey); ok {
		switch {
		case cp.Seq < last.Seq:
			return rejected(rev, "checkpoint of member %s at seq %d goes back from seq %d, recorded at %s: "+
				"its decision log was cut short or rolled back; the recorded checkpoint stays",
				cp.Node, cp.Seq, last.Seq, last.Time.UTC().Format(time.RFC3339))
		case cp.Seq == last.Seq && cp.Hash != last.Hash:
			return rejected(rev, "checkpoint of member %s at seq %d has hash %s, but hash %s was recorded for that seq at %s: "+
				"its decision log was rewritten; the recorded checkpoint stays",
				cp.Node, cp.Seq, cp.Hash, last.Hash, last.Time.UTC().Format(time.RFC3339))
		case cp.Seq == last.Seq:
			return Result{Revision: rev} // the same head again
		}
	}
	if f.checkpoints == nil {
		f.checkpoints = make(map[string]checkpointLog)
	}
	f.checkpoints[cp.Node] = log.add(RecordedCheckpoint{SignedCheckpoint: cp, AuditKey: m.AuditKey})
	return Result{Revision: rev}
}

// Checkpoint records a member's signed decision-log checkpoint. It must be
// called on the leader. A checkpoint that does not verify, of an unknown
// member, or that goes back from the member's latest is rejected
// (ErrRejected) and the latest stays.
func (s *Store) Checkpoint(ctx context.Context, cp SignedCheckpoint) (topology.Revision, error) {
	if err := checkCheckpoint(cp); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrRejected, err)
	}
	cp.Time = cp.Time.UTC() // the same instant: the signature covers its unix nanoseconds
	return s.apply(ctx, cmdCheckpoint, cp)
}

// Checkpoints returns the checkpoints recorded for a member, oldest first.
func (s *Store) Checkpoints(node string) []RecordedCheckpoint {
	s.fsm.mu.Lock()
	defer s.fsm.mu.Unlock()
	return slices.Clone(s.fsm.checkpoints[node])
}
