package raft

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/vigil-iot/vigil/topology"
)

// Pending chunked documents are dropped deterministically, by log position,
// when they cannot complete: a leader that died half-way leaves its chunks
// behind and its successor starts a new transaction.
const (
	maxPendingDocuments = 4
	pendingWindow       = 100_000 // log entries
)

// maxDocumentBytes bounds a decompressed document.
const maxDocumentBytes = 2 << 30

// ErrRejected marks a command that was committed but changed nothing because
// it broke a rule (an unknown subject, a bad value). Every replica rejects it
// the same way.
var ErrRejected = errors.New("command rejected")

// Result is what applying one log entry produced.
type Result struct {
	Revision topology.Revision
	Err      error
}

type pendingDocument struct {
	firstIndex uint64
	total      int
	sha        string
	chunks     [][]byte
	received   int
}

// fsm applies log entries to an immutable topology.Snapshot. Apply and
// Restore are called by hashicorp/raft from one goroutine; readers use the
// hub, which always holds a complete snapshot.
type fsm struct {
	log *slog.Logger
	hub *hub
	// observer is told how long each Apply takes (Store.SetObserver).
	observer atomic.Pointer[Observer]

	mu          sync.Mutex // guards what follows against Snapshot
	members     map[string]Member
	checkpoints map[string]checkpointLog // by member; never removed with the member
	pending     map[string]*pendingDocument
	nonces      *usedNonces // attestation nonces used and not yet expired
	incidents   *incidents
	lastIndex   uint64

	// base is the committed state; the hub publishes it with this
	// member's local changes over it (see local.go).
	base  atomic.Pointer[topology.Snapshot]
	local localOverlay
}

var _ hraft.FSM = (*fsm)(nil)

func newFSM(log *slog.Logger) *fsm {
	f := &fsm{
		log:         log,
		hub:         newHub(topology.EmptySnapshot()),
		members:     make(map[string]Member),
		checkpoints: make(map[string]checkpointLog),
		pending:     make(map[string]*pendingDocument),
		nonces:      newUsedNonces(),
		incidents:   newIncidents(),
	}
	f.base.Store(topology.EmptySnapshot())
	return f
}

// Apply applies one committed entry. It panics on an entry it cannot
// decode: a replica that skipped it would silently diverge from the others.
func (f *fsm) Apply(l *hraft.Log) any {
	if o := f.observed(); o.Applied != nil {
		defer func(start time.Time) { o.Applied(time.Since(start)) }(time.Now())
	}
	t, body, err := decodeHeader(l.Data)
	if err != nil {
		panic(fmt.Sprintf("vigil: raft log entry %d (term %d) cannot be applied: %v; "+
			"refusing to diverge from the other replicas", l.Index, l.Term, err))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if l.Index <= f.lastIndex {
		// Already applied: this member replayed its own log at start
		// (applied.go) and raft now applies the same entry.
		return Result{Revision: f.current().Revision()}
	}
	f.lastIndex = l.Index
	switch t {
	case cmdDocumentChunk:
		var c documentChunk
		mustDecode(l, body, &c)
		return f.applyChunk(l.Index, &c)
	case cmdState:
		var b stateBatch
		mustDecode(l, body, &b)
		return f.applyState(l.Index, b.Ops)
	case cmdMember:
		var m Member
		mustDecode(l, body, &m)
		if m.AuditKey != "" {
			if _, err := ParseAuditKey(m.AuditKey); err != nil {
				return rejected(f.current().Revision(), "member %s: %v", m.ID, err)
			}
		}
		f.members = maps.Clone(f.members)
		f.members[m.ID] = m
		return Result{Revision: f.current().Revision()}
	case cmdRemoveMember:
		var r removeMember
		mustDecode(l, body, &r)
		f.members = maps.Clone(f.members)
		delete(f.members, r.ID)
		return Result{Revision: f.current().Revision()}
	case cmdCheckpoint:
		var cp SignedCheckpoint
		mustDecode(l, body, &cp)
		return f.applyCheckpoint(cp)
	case cmdIncident:
		var c incidentCmd
		mustDecode(l, body, &c)
		return f.applyIncident(&c)
	}
	panic(fmt.Sprintf("vigil: raft log entry %d: command type %d has no handler", l.Index, t))
}

func mustDecode(l *hraft.Log, body []byte, v any) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		panic(fmt.Sprintf("vigil: raft log entry %d (term %d) has a payload that does not decode: %v; "+
			"refusing to diverge from the other replicas", l.Index, l.Term, err))
	}
}

// current is the committed state, without this member's local changes.
func (f *fsm) current() *topology.Snapshot { return f.base.Load() }

func rejected(rev topology.Revision, format string, args ...any) Result {
	return Result{Revision: rev, Err: fmt.Errorf("%w: %s", ErrRejected, fmt.Sprintf(format, args...))}
}

func (f *fsm) applyChunk(index uint64, c *documentChunk) Result {
	cur := f.current()
	f.expirePending(index)
	if c.Total < 1 || c.Seq < 0 || c.Seq >= c.Total {
		return rejected(cur.Revision(), "document chunk %d of %d is out of range", c.Seq, c.Total)
	}
	p, ok := f.pending[c.Txn]
	if !ok && c.Seq != 0 {
		return rejected(cur.Revision(), "document chunk %d of transaction %s arrived without its first chunk; nothing was changed", c.Seq, c.Txn)
	}
	if !ok {
		p = &pendingDocument{firstIndex: index, total: c.Total, sha: c.SHA256, chunks: make([][]byte, c.Total)}
		if c.Total > 1 {
			f.pending[c.Txn] = p
		}
	}
	if p.total != c.Total || p.sha != c.SHA256 {
		delete(f.pending, c.Txn)
		return rejected(cur.Revision(), "document chunk %d of transaction %s does not match its earlier chunks", c.Seq, c.Txn)
	}
	if p.chunks[c.Seq] == nil {
		p.received++
	}
	p.chunks[c.Seq] = c.Data
	if p.received < p.total {
		if c.Seq == c.Total-1 { // chunks are proposed in order: the last one closes the transaction
			delete(f.pending, c.Txn)
			return rejected(cur.Revision(), "document transaction %s ended with %d of %d chunks; nothing was changed", c.Txn, p.received, p.total)
		}
		return Result{Revision: cur.Revision()}
	}
	delete(f.pending, c.Txn)
	doc, err := assemble(p)
	if err != nil {
		return rejected(cur.Revision(), "%v", err)
	}
	ix, err := topology.NewIndex(doc)
	if err != nil {
		return Result{Revision: cur.Revision(), Err: err}
	}
	rev := topology.Revision(index)
	// Keep the runtime state of subjects that still exist; drop the rest.
	state := cur.State().Retain(ix.Exists)
	f.publish(Event{Snapshot: topology.NewSnapshot(rev, rev, ix, state), Document: true})
	return Result{Revision: rev}
}

// expirePending forgets chunked documents that can no longer complete.
func (f *fsm) expirePending(index uint64) {
	for txn, p := range f.pending {
		if index-p.firstIndex > pendingWindow {
			delete(f.pending, txn)
		}
	}
	for len(f.pending) >= maxPendingDocuments {
		oldest := ""
		for txn, p := range f.pending {
			if oldest == "" || p.firstIndex < f.pending[oldest].firstIndex {
				oldest = txn
			}
		}
		delete(f.pending, oldest)
	}
}

func assemble(p *pendingDocument) (*topology.Document, error) {
	compressed := bytes.Join(p.chunks, nil)
	sum := sha256.Sum256(compressed)
	if hex.EncodeToString(sum[:]) != p.sha {
		return nil, fmt.Errorf("document checksum mismatch")
	}
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, fmt.Errorf("document is not gzip: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(zr, maxDocumentBytes+1))
	if err != nil {
		return nil, fmt.Errorf("document does not decompress: %w", err)
	}
	if len(raw) > maxDocumentBytes {
		return nil, fmt.Errorf("document is larger than %d bytes", maxDocumentBytes)
	}
	// The leader encoded this document from one it had validated, so the
	// key-case and duplicate checks that topology.Decode applies to
	// hand-written input are not needed; unknown fields (a newer leader)
	// still are an error.
	var doc topology.Document
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("document does not decode: %w", err)
	}
	return &doc, nil
}

// applyState applies a batch atomically: one bad operation rejects it all.
func (f *fsm) applyState(index uint64, ops []StateOp) Result {
	cur := f.current()
	ix := cur.Index()
	updates := make(map[topology.Subject]*topology.SubjectState, len(ops))
	batchNonces := map[string]bool{}
	var problems []string
	for i, op := range ops {
		if !ix.Exists(op.Subject) {
			problems = append(problems, fmt.Sprintf("ops[%d]: unknown %s", i, op.Subject))
			continue
		}
		if op.Subject.Kind == topology.KindService {
			problems = append(problems, fmt.Sprintf("ops[%d]: %s: services hold no runtime state", i, op.Subject))
			continue
		}
		if op.Nonce != "" {
			if exp, used := f.nonces.used[op.Nonce]; used || batchNonces[op.Nonce] {
				problems = append(problems, fmt.Sprintf("ops[%d]: %s: nonce %s… was already used (valid until %s): a replayed attestation",
					i, op.Subject, op.Nonce[:min(16, len(op.Nonce))], exp.UTC().Format(time.RFC3339)))
				continue
			}
			if f.nonces.forgot(op.NonceExpires) {
				problems = append(problems, fmt.Sprintf("ops[%d]: %s: nonce %s… expires at %s, no later than nonces the log has forgotten (until %s), so a replay cannot be told: a member's clock is ahead of the verifier's",
					i, op.Subject, op.Nonce[:min(16, len(op.Nonce))], op.NonceExpires.UTC().Format(time.RFC3339), f.nonces.forgotten.UTC().Format(time.RFC3339)))
				continue
			}
			batchNonces[op.Nonce] = true
		}
		prev, seen := updates[op.Subject]
		if !seen {
			prev = cur.SubjectState(op.Subject)
		}
		next, err := applyOp(prev, &op)
		if err != nil {
			problems = append(problems, fmt.Sprintf("ops[%d]: %s: %v", i, op.Subject, err))
			continue
		}
		updates[op.Subject] = next
	}
	if len(problems) > 0 {
		return rejected(cur.Revision(), "%s", strings.Join(problems, "; "))
	}
	if len(ops) == 0 {
		return Result{Revision: cur.Revision()}
	}
	for _, op := range ops {
		if op.Nonce != "" {
			f.nonces.use(op.Nonce, op.NonceExpires, op.time())
		}
	}
	rev := topology.Revision(index)
	subjects := slices.SortedFunc(maps.Keys(updates), func(a, b topology.Subject) int {
		return strings.Compare(a.String(), b.String())
	})
	snap := topology.NewSnapshot(rev, cur.DocumentRevision(), ix, cur.State().With(updates))
	f.publish(Event{Snapshot: snap, Subjects: subjects})
	return Result{Revision: rev}
}

// applyOp returns a new state; prev is never modified.
func applyOp(prev *topology.SubjectState, op *StateOp) (*topology.SubjectState, error) {
	var next topology.SubjectState
	if prev != nil {
		next = *prev
	}
	switch op.Op {
	case OpQuarantine:
		q := op.Quarantine
		if q == nil || strings.TrimSpace(q.Reason) == "" {
			return nil, errors.New("quarantine needs a reason")
		}
		if q.Since.IsZero() {
			return nil, errors.New("quarantine needs a time")
		}
		next.Quarantine = q
	case OpRelease:
		// A release is an operator's judgement that the subject is fine:
		// its risk starts again from zero (the monitor forgets its
		// findings too), so it is not restricted or re-quarantined by
		// what it did before.
		next.Quarantine, next.Risk = nil, nil
	case OpSetRisk:
		r := op.Risk
		if r == nil || r.Score < 0 || r.Score > 100 {
			return nil, errors.New("risk score must be from 0 to 100")
		}
		next.Risk = r
	case OpSetAttestation:
		a := op.Attestation
		if a == nil || a.VerifiedAt.IsZero() || !a.ExpiresAt.After(a.VerifiedAt) {
			return nil, errors.New("attestation needs a verification time and a later expiry")
		}
		if a.Status != "" && a.Status != topology.AttestationPassed && a.Status != topology.AttestationFailed {
			return nil, fmt.Errorf("attestation status %q", a.Status)
		}
		next.Attestation = a
	case OpClearAttestation:
		next.Attestation = nil
	case OpEnroll:
		e := op.Enrollment
		if e == nil || e.TPMAK == "" && e.EATKey == "" || e.Fingerprint == "" || e.At.IsZero() {
			return nil, errors.New("enrollment needs a key, its fingerprint and a time")
		}
		next.Enrollment = e
		if a := next.Attestation; a != nil && a.Clock != nil {
			c := *a // a new key is a new TPM: its counters start again
			c.Clock = nil
			next.Attestation = &c
		}
	default:
		return nil, fmt.Errorf("unknown operation %q", op.Op)
	}
	if op.Nonce != "" {
		// Checked after the operation's own payload, which op.time reads.
		switch {
		case op.Op != OpSetAttestation && op.Op != OpQuarantine:
			return nil, fmt.Errorf("operation %q carries no nonce", op.Op)
		case len(op.Nonce) != 64 || op.NonceExpires.IsZero():
			return nil, errors.New("a nonce is 64 hex digits with an expiry")
		case op.Op == OpQuarantine && !op.NonceExpires.Equal(op.Quarantine.Since.Add(LocalQuarantineTTL)):
			// A local quarantine's ID is remembered for LocalQuarantineTTL
			// from when it was taken, no longer.
			return nil, fmt.Errorf("a local quarantine's ID expires %s after it was taken", LocalQuarantineTTL)
		}
	}
	return &next, nil
}

// time is when the proposer says the operation happened, for a nonce's
// bookkeeping: an attestation's verification, a quarantine's start.
func (op *StateOp) time() time.Time {
	switch {
	case op.Attestation != nil:
		return op.Attestation.VerifiedAt
	case op.Quarantine != nil:
		return op.Quarantine.Since
	}
	return op.NonceExpires
}

// Members returns the registered members by ID.
func (f *fsm) Members() map[string]Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.members
}
