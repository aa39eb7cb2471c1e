package raft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/vigil-iot/vigil/topology"
)

// testDoc is a small valid document with n devices behind two gateways.
func testDoc(n int) *topology.Document {
	doc := &topology.Document{
		APIVersion:    topology.APIVersion,
		TrustDomain:   "test.example",
		Zones:         []topology.Zone{{Name: "north"}, {Name: "cloud"}},
		Gateways:      []topology.Gateway{{Name: "gw-1", Zone: "north"}, {Name: "gw-2", Zone: "north"}},
		DeviceClasses: []topology.DeviceClass{{Name: "sensor", RateLimit: "10/s"}},
		Services: []topology.Service{{
			Name: "telemetry", Zone: "cloud", Protocol: "http",
			Hosts: []string{"telemetry.test.example"}, Endpoints: []string{"127.0.0.1:8443"},
		}},
		Flows: []topology.Flow{{
			Name: "sensor-telemetry",
			From: topology.Selector{Classes: []string{"sensor"}},
			To:   topology.Selector{Service: "telemetry"},
			HTTP: &topology.HTTPMatch{Methods: []string{"POST"}, Paths: []string{"/v1/*"}},
		}},
	}
	for i := range n {
		doc.Devices = append(doc.Devices, topology.Device{
			Name: fmt.Sprintf("dev-%05d", i), Class: "sensor", Gateway: fmt.Sprintf("gw-%d", i%2+1),
		})
	}
	return doc
}

type cluster struct {
	t      *testing.T
	stores map[string]*Store
	trans  map[string]*hraft.InmemTransport
	dirs   map[string]string
	cfg    func(*Config)
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newCluster starts n members on hraft's in-memory transport, each with its
// own bolt log store on disk; the first bootstraps and adds the others.
func newCluster(t *testing.T, n int, tweak func(*Config)) *cluster {
	t.Helper()
	c := &cluster{t: t, stores: map[string]*Store{}, trans: map[string]*hraft.InmemTransport{}, dirs: map[string]string{}, cfg: tweak}
	for i := range n {
		id := fmt.Sprintf("n%d", i+1)
		c.dirs[id] = t.TempDir()
		c.start(id, i == 0)
	}
	leader := c.leader()
	ctx := ctxT(t)
	for id := range c.stores {
		if id == leader.ID() {
			continue
		}
		if err := leader.AddVoter(ctx, Member{ID: id, RaftAddr: string(c.trans[id].LocalAddr())}); err != nil {
			t.Fatalf("add voter %s: %v", id, err)
		}
	}
	t.Cleanup(func() {
		for _, s := range c.stores {
			s.Close()
		}
	})
	return c
}

func (c *cluster) start(id string, bootstrap bool) *Store {
	c.t.Helper()
	_, tr := hraft.NewInmemTransport(hraft.ServerAddress(id))
	for other, ot := range c.trans {
		if other == id {
			continue
		}
		tr.Connect(ot.LocalAddr(), ot)
		ot.Connect(tr.LocalAddr(), tr)
	}
	c.trans[id] = tr
	cfg := Config{
		ID: id, DataDir: c.dirs[id], Bootstrap: bootstrap, Transport: tr, Logger: quietLogger(),
		RaftLogLevel:     "off",
		HeartbeatTimeout: 250 * time.Millisecond, ElectionTimeout: 250 * time.Millisecond,
		LeaderLeaseTimeout: 125 * time.Millisecond,
	}
	if c.cfg != nil {
		c.cfg(&cfg)
	}
	s, err := Open(cfg)
	if err != nil {
		c.t.Fatalf("open %s: %v", id, err)
	}
	c.stores[id] = s
	return s
}

// stop cuts a member off the in-memory network, as a crash would, and
// then shuts it down.
func (c *cluster) stop(id string) {
	c.trans[id].DisconnectAll()
	for other, ot := range c.trans {
		if other != id {
			ot.Disconnect(hraft.ServerAddress(id))
		}
	}
	c.stores[id].Close()
	delete(c.stores, id)
	delete(c.trans, id)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (c *cluster) leader() *Store {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, s := range c.stores {
			if s.IsLeader() {
				return s
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatal("no leader elected within 10s")
	return nil
}

// converge waits until every running member has applied rev.
func (c *cluster) converge(rev topology.Revision) {
	c.t.Helper()
	ctx := ctxT(c.t)
	for id, s := range c.stores {
		if _, err := s.WaitFor(ctx, rev); err != nil {
			c.t.Fatalf("%s did not reach revision %d (at %d): %v", id, rev, s.Current().Revision(), err)
		}
	}
}

// write applies ops through whichever member leads, retrying while
// leadership moves.
func (c *cluster) write(ops ...StateOp) topology.Revision {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rev, err := c.leader().UpdateState(ctxT(c.t), ops)
		if err == nil {
			return rev
		}
		if !errors.Is(err, ErrNotLeader) || time.Now().After(deadline) {
			c.t.Fatalf("write: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func quarantineOp(dev string, at time.Time) StateOp {
	return StateOp{Subject: topology.DeviceSubject(dev), Op: OpQuarantine,
		Quarantine: &topology.Quarantine{Reason: "test", By: "operator/t", Since: at}}
}

func TestClusterAppliesEverywhere(t *testing.T) {
	c := newCluster(t, 3, nil)
	ctx := ctxT(t)
	leader := c.leader()
	rev, err := leader.ReplaceDocument(ctx, mustIndex(t, testDoc(10)))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	rev2, err := leader.UpdateState(ctx, []StateOp{quarantineOp("dev-00003", at)})
	if err != nil {
		t.Fatal(err)
	}
	if rev2 <= rev {
		t.Fatalf("state revision %d is not after document revision %d", rev2, rev)
	}
	c.converge(rev2)
	for id, s := range c.stores {
		snap := s.Current()
		if snap.DocumentRevision() != rev || snap.Index().NumDevices() != 10 {
			t.Errorf("%s: doc revision %d devices %d, want %d and 10", id, snap.DocumentRevision(), snap.Index().NumDevices(), rev)
		}
		q := snap.SubjectState(topology.DeviceSubject("dev-00003"))
		if q == nil || q.Quarantine == nil || !q.Quarantine.Since.Equal(at) {
			t.Errorf("%s: quarantine of dev-00003 = %+v", id, q)
		}
	}
}

func TestFollowerRefusesWritesNamingTheLeader(t *testing.T) {
	c := newCluster(t, 3, nil)
	leader := c.leader()
	for id, s := range c.stores {
		if s == leader {
			continue
		}
		if err := s.WaitForLeader(ctxT(t)); err != nil {
			t.Fatalf("%s never heard from a leader: %v", id, err)
		}
		_, err := s.UpdateState(ctxT(t), []StateOp{quarantineOp("dev-00001", time.Now())})
		var nl *NotLeaderError
		if !errors.As(err, &nl) || nl.LeaderID != leader.ID() {
			t.Errorf("%s: err = %v, want NotLeaderError naming %s", id, err, leader.ID())
		}
	}
}

func TestLeaderLossElectsANewLeaderAndKeepsCommittedWrites(t *testing.T) {
	c := newCluster(t, 3, nil)
	ctx := ctxT(t)
	old := c.leader()
	if _, err := old.ReplaceDocument(ctx, mustIndex(t, testDoc(20))); err != nil {
		t.Fatal(err)
	}
	var last topology.Revision
	for i := range 10 {
		last = c.write(quarantineOp(fmt.Sprintf("dev-%05d", i), time.Now()))
	}
	old = c.leader()
	oldID := old.ID()
	c.stop(oldID)

	leader := c.leader()
	if leader.ID() == oldID {
		t.Fatal("stopped member still leads")
	}
	rev, err := leader.UpdateState(ctx, []StateOp{quarantineOp("dev-00015", time.Now())})
	if err != nil {
		t.Fatalf("write after failover: %v", err)
	}
	if rev <= last {
		t.Fatalf("revision went backwards: %d after %d", rev, last)
	}
	// The old leader comes back from its data dir and catches up.
	c.start(oldID, false)
	c.converge(rev)
	for id, s := range c.stores {
		for _, d := range []string{"dev-00000", "dev-00009", "dev-00015"} {
			if !s.Current().Quarantined(topology.DeviceSubject(d)) {
				t.Errorf("%s: %s is not quarantined", id, d)
			}
		}
	}
}

func TestChunkedDocumentTakesEffectWithItsLastChunk(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) { cfg.ChunkSize = 512 })
	ctx := ctxT(t)
	leader := c.leader()
	doc := testDoc(500)
	chunks, err := leader.encodeDocument(doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(chunks) < 3 {
		t.Fatalf("document of 500 devices made %d chunks of 512 bytes; the test needs several", len(chunks))
	}
	rev, err := leader.ReplaceDocument(ctx, mustIndex(t, doc))
	if err != nil {
		t.Fatal(err)
	}
	c.converge(rev)
	for id, s := range c.stores {
		if n := s.Current().Index().NumDevices(); n != 500 {
			t.Errorf("%s has %d devices, want 500", id, n)
		}
	}
}

func mustIndex(t *testing.T, doc *topology.Document) *topology.Index {
	t.Helper()
	ix, err := topology.NewIndex(doc)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

func TestStateBatchIsAtomic(t *testing.T) {
	c := newCluster(t, 1, nil)
	ctx := ctxT(t)
	s := c.leader()
	rev, err := s.ReplaceDocument(ctx, mustIndex(t, testDoc(5)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.UpdateState(ctx, []StateOp{
		quarantineOp("dev-00001", time.Now()),
		quarantineOp("ghost", time.Now()), // only the replicas know it does not exist
		{Subject: topology.DeviceSubject("dev-00002"), Op: OpSetRisk, Risk: &topology.Risk{Score: 50}},
	})
	if !errors.Is(err, ErrRejected) {
		t.Fatalf("err = %v, want ErrRejected", err)
	}
	for _, want := range []string{"ops[1]: unknown device/ghost"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	snap := s.Current()
	if snap.Revision() != rev || snap.Quarantined(topology.DeviceSubject("dev-00001")) {
		t.Fatalf("rejected batch changed state: revision %d (want %d)", snap.Revision(), rev)
	}
}

func TestReplacingTheDocumentKeepsStateOfSurvivors(t *testing.T) {
	c := newCluster(t, 1, nil)
	ctx := ctxT(t)
	s := c.leader()
	if _, err := s.ReplaceDocument(ctx, mustIndex(t, testDoc(5))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateState(ctx, []StateOp{quarantineOp("dev-00001", time.Now()), quarantineOp("dev-00004", time.Now())}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReplaceDocument(ctx, mustIndex(t, testDoc(3))); err != nil { // dev-00003 and dev-00004 go away
		t.Fatal(err)
	}
	snap := s.Current()
	if !snap.Quarantined(topology.DeviceSubject("dev-00001")) {
		t.Error("dev-00001 lost its quarantine although it still exists")
	}
	if snap.SubjectState(topology.DeviceSubject("dev-00004")) != nil || snap.State().Len() != 1 {
		t.Errorf("state of removed dev-00004 kept; %d subjects with state", snap.State().Len())
	}
	// It does not come back when the device is re-added.
	if _, err := s.ReplaceDocument(ctx, mustIndex(t, testDoc(5))); err != nil {
		t.Fatal(err)
	}
	if s.Current().Quarantined(topology.DeviceSubject("dev-00004")) {
		t.Error("re-added dev-00004 is quarantined again")
	}
}

func TestSubscriptionDeliversEveryRevisionInOrder(t *testing.T) {
	c := newCluster(t, 3, nil)
	ctx := ctxT(t)
	leader := c.leader()
	var follower *Store
	for _, s := range c.stores {
		if s != leader {
			follower = s
		}
	}
	sub, start := follower.Subscribe()
	defer sub.Close()
	var revs []topology.Revision
	rev, err := leader.ReplaceDocument(ctx, mustIndex(t, testDoc(10)))
	if err != nil {
		t.Fatal(err)
	}
	revs = append(revs, rev)
	for i := range 30 {
		rev, err := leader.UpdateState(ctx, []StateOp{quarantineOp(fmt.Sprintf("dev-%05d", i%10), time.Now())})
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, rev)
	}
	prev := start.Revision()
	for i, want := range revs {
		ev, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if ev.Snapshot.Revision() != want || ev.Snapshot.Revision() <= prev {
			t.Fatalf("event %d has revision %d, want %d (previous %d)", i, ev.Snapshot.Revision(), want, prev)
		}
		if i == 0 && !ev.Document || i > 0 && (ev.Document || len(ev.Subjects) != 1) {
			t.Fatalf("event %d: document=%v subjects=%v", i, ev.Document, ev.Subjects)
		}
		prev = ev.Snapshot.Revision()
	}
}

// TestOpsNoReplicaCouldApplyAreRefusedBeforeTheLog: an operation without a
// valid kind used to be committed and then halt every replica on decode.
func TestOpsNoReplicaCouldApplyAreRefusedBeforeTheLog(t *testing.T) {
	c := newCluster(t, 1, nil)
	ctx := ctxT(t)
	s := c.leader()
	rev, err := s.ReplaceDocument(ctx, mustIndex(t, testDoc(2)))
	if err != nil {
		t.Fatal(err)
	}
	for name, op := range map[string]StateOp{
		"no kind":         {Subject: topology.Subject{Name: "dev-00001"}, Op: OpRelease},
		"service kind":    {Subject: topology.ServiceSubject("telemetry"), Op: OpRelease},
		"out of range":    {Subject: topology.Subject{Kind: 9, Name: "dev-00001"}, Op: OpRelease},
		"no name":         {Subject: topology.Subject{Kind: topology.KindDevice}, Op: OpRelease},
		"unknown op":      {Subject: topology.DeviceSubject("dev-00001"), Op: "explode"},
		"missing payload": {Subject: topology.DeviceSubject("dev-00001"), Op: OpSetRisk},
	} {
		if _, err := s.UpdateState(ctx, []StateOp{op}); !errors.Is(err, ErrRejected) {
			t.Errorf("%s: err = %v, want ErrRejected", name, err)
		}
	}
	if got := s.Current().Revision(); got != rev {
		t.Fatalf("revision moved from %d to %d", rev, got)
	}
	if _, err := s.UpdateState(ctx, []StateOp{quarantineOp("dev-00001", time.Now())}); err != nil {
		t.Fatalf("the member no longer applies writes: %v", err)
	}
}
