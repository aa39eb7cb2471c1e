package raft

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/vigil-iot/vigil/topology"
)

// ErrNotLeader is wrapped by *NotLeaderError.
var ErrNotLeader = errors.New("not the raft leader")

// NotLeaderError says which member leads, so that callers can forward.
type NotLeaderError struct {
	LeaderID   string // empty while there is no leader
	LeaderAddr string // the leader's raft address
}

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return "not the raft leader, and no leader is known"
	}
	return fmt.Sprintf("not the raft leader; %s at %s leads", e.LeaderID, e.LeaderAddr)
}

func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }

// Config sets up a Store.
type Config struct {
	ID      string // this member's unique ID
	DataDir string // raft.db and snapshots/ live here
	// BindAddr is the raft listen address and AdvertiseAddr the one peers
	// dial (default BindAddr, which must then not be unspecified).
	BindAddr, AdvertiseAddr string
	// ClusterKey authenticates raft peers to each other; every member holds
	// the same one (at least MinClusterKeyLen bytes).
	ClusterKey []byte
	// Bootstrap makes a member with no raft state start a new cluster of one.
	Bootstrap bool
	// Transport overrides the TCP transport (tests use hraft's in-memory one).
	Transport    hraft.Transport
	Logger       *slog.Logger
	RaftLogLevel string // hashicorp/raft's own log level; default "warn"

	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout time.Duration
	SnapshotThreshold                                     uint64
	SnapshotInterval                                      time.Duration
	// ChunkSize is the largest piece of a compressed document one log entry
	// carries (default 4 MiB).
	ChunkSize int
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.HeartbeatTimeout = cmp.Or(c.HeartbeatTimeout, 500*time.Millisecond)
	c.ElectionTimeout = cmp.Or(c.ElectionTimeout, 500*time.Millisecond)
	c.LeaderLeaseTimeout = cmp.Or(c.LeaderLeaseTimeout, 250*time.Millisecond)
	c.SnapshotThreshold = cmp.Or(c.SnapshotThreshold, 8192)
	c.SnapshotInterval = cmp.Or(c.SnapshotInterval, 2*time.Minute)
	c.ChunkSize = cmp.Or(c.ChunkSize, 4<<20)
	c.RaftLogLevel = cmp.Or(c.RaftLogLevel, "warn")
}

// Store is one member of the replicated topology store.
type Store struct {
	cfg   Config
	raft  *hraft.Raft
	fsm   *fsm
	logs  *raftboltdb.BoltStore
	trans hraft.Transport
	layer *secureLayer // nil with an injected transport
	docMu sync.Mutex   // one document replacement at a time from this leader
	// leaders counts the leader changes this member sees (LeaderChanges).
	leaders leaderWatch
	lead    leadership // VerifiedLeader's confirmation (leadership.go)
	// resumed is what Open recovered from this member's own log, and
	// stopMark ends the goroutine keeping the applied mark (applied.go).
	resumed            Resumed
	stopMark, markDone chan struct{}
}

// Open starts a member. With existing raft state in DataDir it rejoins its
// cluster; otherwise, with Bootstrap, it becomes a cluster of one, and
// without it waits to be added by an existing member.
func Open(cfg Config) (*Store, error) {
	cfg.setDefaults()
	if cfg.ID == "" {
		return nil, errors.New("raft: member ID is required")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("raft: data dir: %w", err)
	}
	hlog := hclog.New(&hclog.LoggerOptions{
		Name: "raft", Level: hclog.LevelFromString(cfg.RaftLogLevel), Output: os.Stderr,
	})
	logs, err := raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(cfg.DataDir, "raft.db"),
		BoltOptions: &bbolt.Options{Timeout: 2 * time.Second},
	})
	if err != nil {
		return nil, fmt.Errorf("raft: open log store %s (is another vigil using this data dir?): %w",
			filepath.Join(cfg.DataDir, "raft.db"), err)
	}
	snaps, err := hraft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hlog)
	if err != nil {
		logs.Close()
		return nil, fmt.Errorf("raft: snapshot store: %w", err)
	}
	trans := cfg.Transport
	var layer *secureLayer
	if trans == nil {
		if trans, layer, err = tcpTransport(&cfg, hlog); err != nil {
			logs.Close()
			return nil, err
		}
	}
	rc := hraft.DefaultConfig()
	rc.LocalID = hraft.ServerID(cfg.ID)
	rc.Logger = hlog
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.BatchApplyCh = true
	rc.NoLegacyTelemetry = true

	s := &Store{cfg: cfg, fsm: newFSM(cfg.Logger), logs: logs, trans: trans, layer: layer}
	if err := s.fsm.openLocal(cfg.DataDir); err != nil {
		s.closeParts()
		return nil, fmt.Errorf("raft: local quarantines: %w", err)
	}
	cached, err := hraft.NewLogCache(1024, logs)
	if err != nil {
		s.closeParts()
		return nil, err
	}
	hasState, err := hraft.HasExistingState(cached, logs, snaps)
	if err != nil {
		s.closeParts()
		return nil, fmt.Errorf("raft: inspect state: %w", err)
	}
	if !hasState && cfg.Bootstrap {
		boot := hraft.Configuration{Servers: []hraft.Server{{
			Suffrage: hraft.Voter, ID: rc.LocalID, Address: trans.LocalAddr(),
		}}}
		if err := hraft.BootstrapCluster(rc, cached, logs, snaps, trans, boot); err != nil {
			s.closeParts()
			return nil, fmt.Errorf("raft: bootstrap: %w", err)
		}
	}
	r, err := hraft.NewRaft(rc, s.fsm, cached, logs, snaps, trans)
	if err != nil {
		s.closeParts()
		return nil, fmt.Errorf("raft: start: %w", err)
	}
	s.raft = r
	r.RegisterObserver(s.leaders.observer())
	s.replayOwn(logs)
	s.stopMark, s.markDone = make(chan struct{}), make(chan struct{})
	go s.keepMark(s.stopMark, s.markDone)
	cfg.Logger.Info("raft member started", "id", cfg.ID, "addr", string(trans.LocalAddr()),
		"existing_state", hasState, "bootstrap", !hasState && cfg.Bootstrap)
	return s, nil
}

func tcpTransport(cfg *Config, hlog hclog.Logger) (hraft.Transport, *secureLayer, error) {
	ln, err := net.Listen("tcp", cfg.BindAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("raft: listen on %s: %w", cfg.BindAddr, err)
	}
	adv := cmp.Or(cfg.AdvertiseAddr, ln.Addr().String())
	advAddr, err := net.ResolveTCPAddr("tcp", adv)
	if err != nil || advAddr.IP == nil || advAddr.IP.IsUnspecified() {
		ln.Close()
		return nil, nil, fmt.Errorf("raft: advertise address %q is not an address peers can dial; set one", adv)
	}
	layer, err := newSecureLayer(ln, advAddr, cfg.ClusterKey, cfg.Logger)
	if err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("raft: %w", err)
	}
	return hraft.NewNetworkTransportWithConfig(&hraft.NetworkTransportConfig{
		Stream: layer, MaxPool: 5, Timeout: 10 * time.Second, Logger: hlog,
	}), layer, nil
}

func (s *Store) closeParts() {
	if c, ok := s.trans.(io.Closer); ok {
		c.Close()
	}
	s.logs.Close()
}

// Close stops this member (it stays in the configuration) and releases the
// data dir. A leader first hands leadership to a follower, so that a
// graceful stop costs the cluster no election timeout.
func (s *Store) Close() error {
	if s.IsLeader() {
		if err := s.raft.LeadershipTransfer().Error(); err != nil {
			s.cfg.Logger.Debug("raft: no leadership transfer before stopping", "err", err)
		}
	}
	err := s.raft.Shutdown().Error()
	if s.stopMark != nil {
		close(s.stopMark)
		<-s.markDone
		s.stopMark = nil
	}
	s.closeParts()
	return err
}

// Current is the latest committed snapshot on this member.
// It includes this member's local quarantines (QuarantineLocal), which are
// in force here though not yet committed.
func (s *Store) Current() *topology.Snapshot { snap, _ := s.fsm.hub.snapshot(); return snap }

// Subscribe delivers every change committed after the returned snapshot.
func (s *Store) Subscribe() (*Subscription, *topology.Snapshot) { return s.fsm.hub.subscribe() }

// WaitFor blocks until this member has applied revision rev.
func (s *Store) WaitFor(ctx context.Context, rev topology.Revision) (*topology.Snapshot, error) {
	return s.fsm.hub.waitFor(ctx, rev)
}

// ID is this member's ID.
func (s *Store) ID() string { return s.cfg.ID }

// Addr is this member's raft address.
func (s *Store) Addr() string { return string(s.trans.LocalAddr()) }

// IsLeader reports whether this member leads.
func (s *Store) IsLeader() bool { return s.raft.State() == hraft.Leader }

// Leader returns the leader's ID and raft address, empty when unknown.
func (s *Store) Leader() (id, addr string) {
	a, i := s.raft.LeaderWithID()
	return string(i), string(a)
}

// Members returns the registered members by ID; the map must not be
// modified.
func (s *Store) Members() map[string]Member { return s.fsm.Members() }

// Member returns a registered member's addresses.
func (s *Store) Member(id string) (Member, bool) {
	m, ok := s.fsm.Members()[id]
	return m, ok
}

// WaitForLeader blocks until some member leads.
func (s *Store) WaitForLeader(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if id, _ := s.Leader(); id != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (s *Store) notLeader() error {
	id, addr := s.Leader()
	return &NotLeaderError{LeaderID: id, LeaderAddr: addr}
}

func timeoutOf(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return 30 * time.Second
}

func (s *Store) leaderErr(err error) error {
	if errors.Is(err, hraft.ErrNotLeader) || errors.Is(err, hraft.ErrLeadershipTransferInProgress) {
		return s.notLeader() // nothing was proposed: safe to retry elsewhere
	}
	if errors.Is(err, hraft.ErrLeadershipLost) {
		// Proposed, then the leadership was lost: the entry may yet be
		// committed by the next leader. Not a NotLeaderError, so that no
		// one retries it as if it had been refused.
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
	}
	return fmt.Errorf("raft: %w", err)
}

// ErrOutcomeUnknown wraps the error of a write that was proposed but whose
// fate this member cannot know: it may or may not be applied.
var ErrOutcomeUnknown = errors.New("the write was proposed, then this member lost the leadership; it may or may not be applied")

// proposal is a command submitted to raft and when it was.
type proposal struct {
	hraft.ApplyFuture
	at time.Time
}

// applyFuture submits one command without waiting.
func (s *Store) applyFuture(ctx context.Context, t commandType, payload any) (proposal, error) {
	if !s.IsLeader() {
		return proposal{}, s.notLeader()
	}
	data, err := encodeCommand(t, payload)
	if err != nil {
		return proposal{}, err
	}
	at := time.Now()
	return proposal{s.raft.Apply(data, timeoutOf(ctx)), at}, nil
}

func (s *Store) wait(f proposal) (topology.Revision, error) {
	if err := f.Error(); err != nil {
		return 0, s.leaderErr(err)
	}
	s.committed(f.at)
	res := f.Response().(Result)
	return res.Revision, res.Err
}

func (s *Store) apply(ctx context.Context, t commandType, payload any) (topology.Revision, error) {
	f, err := s.applyFuture(ctx, t, payload)
	if err != nil {
		return 0, err
	}
	return s.wait(f)
}

// ReplaceDocument replaces the document on every member with the validated
// one behind ix (topology.NewIndex or topology.Load make one). A document
// larger than one chunk is committed as several log entries and takes
// effect, atomically, with the last one. It must be called on the leader.
func (s *Store) ReplaceDocument(ctx context.Context, ix *topology.Index) (topology.Revision, error) {
	if !s.IsLeader() {
		return 0, s.notLeader()
	}
	chunks, err := s.encodeDocument(ix.Document())
	if err != nil {
		return 0, err
	}
	s.docMu.Lock()
	defer s.docMu.Unlock()
	futures := make([]proposal, 0, len(chunks))
	for _, c := range chunks {
		f, err := s.applyFuture(ctx, cmdDocumentChunk, c)
		if err != nil {
			return 0, err
		}
		futures = append(futures, f)
	}
	var rev topology.Revision
	for _, f := range futures {
		if rev, err = s.wait(f); err != nil {
			return 0, err
		}
	}
	return rev, nil
}

func (s *Store) encodeDocument(doc *topology.Document) ([]*documentChunk, error) {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err := json.NewEncoder(zw).Encode(doc); err != nil {
		return nil, fmt.Errorf("encode document: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	sum := sha256.Sum256(data)
	txn := make([]byte, 8)
	rand.Read(txn)
	parts := slices.Collect(slices.Chunk(data, s.cfg.ChunkSize))
	chunks := make([]*documentChunk, len(parts))
	for i, p := range parts {
		chunks[i] = &documentChunk{
			Txn: hex.EncodeToString(txn), Seq: i, Total: len(parts),
			SHA256: hex.EncodeToString(sum[:]), Data: p,
		}
	}
	return chunks, nil
}

// UpdateState applies a batch of runtime-state changes atomically. It must
// be called on the leader. A batch naming an unknown subject or carrying a
// bad value is rejected whole (ErrRejected).
func (s *Store) UpdateState(ctx context.Context, ops []StateOp) (topology.Revision, error) {
	if len(ops) == 0 {
		return s.Current().Revision(), nil
	}
	if err := checkOps(ops); err != nil {
		return 0, err
	}
	rev, err := s.apply(ctx, cmdState, stateBatch{Ops: ops})
	if err == nil && slices.ContainsFunc(ops, func(op StateOp) bool { return op.Op == OpQuarantine }) {
		// Followers learn that an entry committed from the leader's next
		// message, which with nothing else to send is the next heartbeat
		// (tens of milliseconds). A barrier entry carries the commit
		// index to them now, so a quarantine reaches every replica at once.
		s.raft.Barrier(100 * time.Millisecond)
	}
	return rev, err
}

// checkOps refuses, before anything is proposed, operations that no replica
// could apply: what reaches the log must decode everywhere.
func checkOps(ops []StateOp) error {
	var problems []string
	for i, op := range ops {
		switch {
		case op.Subject.Kind != topology.KindDevice && op.Subject.Kind != topology.KindGateway:
			problems = append(problems, fmt.Sprintf("ops[%d]: subject kind must be device or gateway", i))
		case op.Subject.Name == "":
			problems = append(problems, fmt.Sprintf("ops[%d]: subject name is required", i))
		}
		if _, err := applyOp(nil, &op); err != nil {
			problems = append(problems, fmt.Sprintf("ops[%d]: %s/%s: %v", i, op.Subject.Kind, op.Subject.Name, err))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrRejected, strings.Join(problems, "; "))
	}
	return nil
}

// RegisterMember records a member's addresses and audit key. It must be
// called on the leader.
func (s *Store) RegisterMember(ctx context.Context, m Member) error {
	if err := checkMember(m); err != nil {
		return err
	}
	if cur, ok := s.Member(m.ID); ok && cur == m {
		return nil
	}
	_, err := s.apply(ctx, cmdMember, m)
	return err
}

// AddVoter adds a member to the raft configuration (or updates its address)
// and records its addresses. It must be called on the leader.
func (s *Store) AddVoter(ctx context.Context, m Member) error {
	if !s.IsLeader() {
		return s.notLeader()
	}
	if err := checkMember(m); err != nil {
		return err
	}
	// A voter that cannot be reached would count toward every quorum and
	// could leave the cluster without a leader; prove it answers, with the
	// cluster key, before it votes.
	if s.layer != nil {
		conn, err := s.layer.Dial(hraft.ServerAddress(m.RaftAddr), 3*time.Second)
		if err != nil {
			return fmt.Errorf("%w: member %s cannot be added: its raft address %s does not answer with the cluster key: %v",
				ErrRejected, m.ID, m.RaftAddr, err)
		}
		conn.Close()
	}
	f := s.raft.AddVoter(hraft.ServerID(m.ID), hraft.ServerAddress(m.RaftAddr), 0, timeoutOf(ctx))
	if err := f.Error(); err != nil {
		return s.leaderErr(err)
	}
	return s.RegisterMember(ctx, m)
}

// checkMember refuses a registration no replica would record.
func checkMember(m Member) error {
	if m.AuditKey == "" {
		return nil
	}
	if _, err := ParseAuditKey(m.AuditKey); err != nil {
		return fmt.Errorf("%w: member %s: %v", ErrRejected, m.ID, err)
	}
	return nil
}

// RemoveMember removes a member from the cluster. It must be called on the
// leader.
func (s *Store) RemoveMember(ctx context.Context, id string) error {
	if !s.IsLeader() {
		return s.notLeader()
	}
	if err := s.raft.RemoveServer(hraft.ServerID(id), 0, timeoutOf(ctx)).Error(); err != nil {
		return s.leaderErr(err)
	}
	_, err := s.apply(ctx, cmdRemoveMember, removeMember{ID: id})
	return err
}

// MemberStatus is one member of the raft configuration.
type MemberStatus struct {
	Member
	Voter  bool `json:"voter"`
	Leader bool `json:"leader"`
}

// Status describes this member's view of the cluster.
type Status struct {
	ID           string            `json:"id"`
	State        string            `json:"state"`
	Term         uint64            `json:"term"`
	LeaderID     string            `json:"leaderId"`
	AppliedIndex uint64            `json:"appliedIndex"`
	Revision     topology.Revision `json:"revision"`
	Members      []MemberStatus    `json:"members"`
}

// Status reports this member's state and the cluster configuration.
func (s *Store) Status() (Status, error) {
	st := Status{
		ID: s.cfg.ID, State: s.raft.State().String(), Term: s.raft.CurrentTerm(),
		AppliedIndex: s.raft.AppliedIndex(), Revision: s.Current().Revision(),
	}
	st.LeaderID, _ = s.Leader()
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return st, fmt.Errorf("raft: configuration: %w", err)
	}
	registered := s.fsm.Members()
	for _, srv := range f.Configuration().Servers {
		m := registered[string(srv.ID)]
		m.ID, m.RaftAddr = string(srv.ID), string(srv.Address)
		st.Members = append(st.Members, MemberStatus{
			Member: m, Voter: srv.Suffrage == hraft.Voter, Leader: string(srv.ID) == st.LeaderID,
		})
	}
	slices.SortFunc(st.Members, func(a, b MemberStatus) int { return cmp.Compare(a.ID, b.ID) })
	return st, nil
}

// AppliedIndex is the last log index this member has applied.
func (s *Store) AppliedIndex() uint64 { return s.raft.AppliedIndex() }

// Barrier waits until this member, which must lead, has applied everything
// committed before the call.
func (s *Store) Barrier(ctx context.Context) error {
	if err := s.raft.Barrier(timeoutOf(ctx)).Error(); err != nil {
		return s.leaderErr(err)
	}
	return nil
}

// Snapshot writes a raft snapshot now and compacts the log; with nothing
// applied since the last one it does nothing.
func (s *Store) Snapshot() error {
	err := s.raft.Snapshot().Error()
	if errors.Is(err, hraft.ErrNothingNewToSnapshot) {
		return nil
	}
	return err
}
