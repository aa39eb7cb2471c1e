package spire

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/spire/spiretest"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"

	"github.com/vigil-iot/vigil/internal/testwait"
)

// These tests run the real spire-server (v1.13.3, built and cached by
// scripts/spire-build.sh, which they call) on a unix socket under /tmp.

const cityTD = "city.example"

// realServer starts spire-server for the test, or skips the test when
// SPIRE cannot be built here.
func realServer(t *testing.T) (*spiretest.Server, *Client) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping a test against the real spire-server")
	}
	if _, err := spiretest.Binaries(); err != nil {
		t.Skipf("real SPIRE is not available (scripts/spire-build.sh could not provide it): %v", err)
	}
	srv, err := spiretest.StartServer("", cityTD)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("spire-server log (tail):\n%s", srv.Tail(30))
		}
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	cl, err := Dial(srv.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return srv, cl
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func newReconciler(t *testing.T, cl *Client, leader *atomic.Bool, opts Options) *Reconciler {
	t.Helper()
	if leader == nil {
		leader = new(atomic.Bool)
		leader.Store(true)
	}
	r, err := NewReconciler(Config{Client: cl, Options: opts, IsLeader: leader.Load, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// city is a generated city of n devices on four gateways in two zones.
func city(n int) *topology.Document {
	return topologytest.Generate(topologytest.Spec{Zones: 2, GatewaysPerZone: 2, Devices: n, NoAttestation: true})
}

// checkConverged asserts that the server holds exactly the entries snap
// wants, among those Vigil owns.
func checkConverged(t *testing.T, ctx context.Context, cl *Client, snap *topology.Snapshot) []Entry {
	t.Helper()
	return checkConvergedWith(t, ctx, cl, snap, DefaultOptions())
}

// checkConvergedWith is checkConverged for options o; edges o skips are
// no error.
func checkConvergedWith(t *testing.T, ctx context.Context, cl *Client, snap *topology.Snapshot, o Options) []Entry {
	t.Helper()
	want, errs := Desired(snap, o)
	for _, err := range errs {
		if skip := (*EdgeSkipped)(nil); !errors.As(err, &skip) {
			t.Fatal(err)
		}
	}
	listed, err := cl.ListEntries(ctx, o.Owner, "")
	if err != nil {
		t.Fatal(err)
	}
	owned := slices.DeleteFunc(listed, func(e Entry) bool { return !o.owns(e.ID) })
	if d := Diff(want, owned); d.Len() != 0 {
		t.Errorf("server differs from the topology: %d to create, %d to update, %d to delete (first: %+v)",
			len(d.Create), len(d.Update), len(d.Delete), d)
	}
	return owned
}

func TestReconcileRealServer(t *testing.T) {
	_, cl := realServer(t)
	ctx := ctxFor(t, 2*time.Minute)

	// Entries Vigil did not create, one of them with Vigil's hint and one
	// in Vigil's ID namespace: none may change.
	foreign := []Entry{
		{SPIFFEID: "spiffe://city.example/manual/x", ParentID: "spiffe://city.example/spire/server", Selectors: []string{"unix:uid:1"}},
		{ID: "manual-with-vigil-hint", SPIFFEID: "spiffe://city.example/zone/z-000/device/d-0000000",
			ParentID: "spiffe://city.example/zone/z-000/gateway/gw-00000", Selectors: []string{"vigil:device:other"}, Hint: "vigil"},
		{ID: "vigil.device.ghost", SPIFFEID: "spiffe://city.example/ghost", ParentID: "spiffe://city.example/spire/server",
			Selectors: []string{"unix:uid:2"}},
	}
	if errs, err := cl.CreateEntries(ctx, foreign); err != nil || len(errs) > 0 {
		t.Fatalf("create foreign entries: %v %v", err, errs)
	}
	before := allEntries(t, ctx, cl)

	r := newReconciler(t, cl, nil, DefaultOptions())
	doc := city(100)
	snap := snapshotOf(t, doc)
	res, err := r.Reconcile(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if res.Created != 104 || res.Updated+res.Deleted+res.Failed != 0 {
		t.Errorf("first pass: %+v, want 104 created (100 devices, 4 services) and nothing else", res)
	}
	checkConverged(t, ctx, cl, snap)

	if res, err = r.Reconcile(ctx, snap); err != nil || res.Created+res.Updated+res.Deleted+res.Failed != 0 {
		t.Errorf("second pass on the same topology: %+v, %v; want no change", res, err)
	}

	// Remove one device, quarantine one, quarantine a gateway (its devices
	// keep their entries), move one device to another gateway.
	doc2 := city(100)
	doc2.Devices = doc2.Devices[:99]
	doc2.Devices[1].Gateway = "gw-00002"
	snap2 := snapshotOf(t, doc2, topology.DeviceSubject("d-0000000"), topology.GatewaySubject("gw-00003"))
	if res, err = r.Reconcile(ctx, snap2); err != nil {
		t.Fatal(err)
	}
	if res.Deleted != 2 || res.Updated != 1 || res.Created+res.Failed != 0 {
		t.Errorf("after the change: %+v, want 2 deleted and 1 updated", res)
	}
	owned := checkConverged(t, ctx, cl, snap2)
	for _, e := range owned {
		if e.ID == "vigil.device.d-0000000" || e.ID == "vigil.device.d-0000099" {
			t.Errorf("entry %s still there", e.ID)
		}
		if e.ID == "vigil.device.d-0000001" && e.ParentID != "spiffe://city.example/zone/z-001/gateway/gw-00002" {
			t.Errorf("moved device's entry: %+v", e)
		}
	}

	// A new reconciler (a restart, or another member come to lead) finds
	// everything in place: its state is the server's.
	if res, err = newReconciler(t, cl, nil, DefaultOptions()).Reconcile(ctx, snap2); err != nil || res.Created+res.Updated+res.Deleted != 0 {
		t.Errorf("a fresh reconciler: %+v, %v; want no change", res, err)
	}

	// A document of another trust domain changes nothing.
	other := city(10)
	other.TrustDomain = "other.example"
	if _, err := r.Reconcile(ctx, snapshotOf(t, other)); !errors.Is(err, ErrTrustDomain) {
		t.Errorf("reconcile with trust domain other.example: %v, want ErrTrustDomain", err)
	}
	checkConverged(t, ctx, cl, snap2)

	after := allEntries(t, ctx, cl)
	for id, e := range before {
		if a, ok := after[id]; !ok || !a.Same(&e) {
			t.Errorf("foreign entry %s changed: before %+v, after %+v", id, e, a)
		}
	}
}

// allEntries lists every entry on the server that Vigil does not own.
func allEntries(t *testing.T, ctx context.Context, cl *Client) map[string]Entry {
	t.Helper()
	out := map[string]Entry{}
	o := DefaultOptions()
	for _, hint := range []string{"", "vigil"} {
		list, err := cl.ListEntries(ctx, hint, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list {
			if !o.owns(e.ID) || e.Hint != "vigil" {
				out[e.ID] = e
			}
		}
	}
	return out
}

// TestReconcileEdgesRealServer declares cloud edges to a real server and
// agent: the reconciler creates each edge's entry and one per fronted
// service, skips (with a warning, not a failure) an edge of an unknown zone
// and one named like a device, and the edge's Envoy (this test process,
// matching the edge selector) gets from the agent's SDS its own SVID and
// the fronted services' SVIDs, and no other. Taking edges away
// deletes their entries, and the agent stops serving them.
func TestReconcileEdgesRealServer(t *testing.T) {
	srv, cl := realServer(t)
	ctx := ctxFor(t, 2*time.Minute)

	// The edge host: an agent attested with a join token, mapped by the
	// operator (here, the test) to the cloud zone's hosts alias.
	tok, _, err := cl.CreateJoinToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agentID := JoinTokenAgentID(cityTD, tok)
	hostsAlias := Entry{ID: "operator.cloud-hosts", SPIFFEID: HostsID(cityTD, "cloud"), ParentID: agentID,
		Selectors: []string{"spiffe_id:" + agentID}}
	if errs, err := cl.CreateEntries(ctx, []Entry{hostsAlias}); err != nil || len(errs) > 0 {
		t.Fatalf("map the hosts alias: %v %v", err, errs)
	}
	agent, err := srv.StartAgent("", tok, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("spire-agent log (tail):\n%s", agent.Tail(30))
		}
		agent.Stop()
		os.RemoveAll(agent.Dir)
	})

	doc := city(8)
	doc.Services[0].Backends = []string{"127.0.0.1:18080"} // telemetry
	doc.Services[1].Backends = []string{"127.0.0.1:18081"} // video-storage
	snap := snapshotOf(t, doc)
	opts := DefaultOptions()
	opts.Edges = []string{"cloud/edge-1", "cloud/edge-2", "mars/edge-1", "cloud/d-0000001"}
	opts.EdgeSelectors = []string{"unix:uid:" + strconv.Itoa(os.Getuid())}
	r := newReconciler(t, cl, nil, opts)
	res, err := r.Reconcile(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	// 8 devices, 4 services, 2 edges, 2 fronted services.
	if res.Created != 16 || res.Updated+res.Deleted+res.Failed != 0 || len(res.Skipped) != 2 {
		t.Errorf("first pass: %+v, want 16 created, 2 edges skipped and nothing else", res)
	}
	owned := checkConvergedWith(t, ctx, cl, snap, opts)
	ids := map[string]Entry{}
	for _, e := range owned {
		ids[e.ID] = e
	}
	for _, id := range []string{"vigil.edge.cloud.edge-1", "vigil.edge.cloud.edge-2", "vigil.fronted.telemetry", "vigil.fronted.video-storage"} {
		if e, ok := ids[id]; !ok || e.ParentID != HostsID(cityTD, "cloud") {
			t.Errorf("entry %s: %+v, found %v", id, e, ok)
		}
	}
	if res, err := r.Reconcile(ctx, snap); err != nil || res.Created+res.Updated+res.Deleted+res.Failed != 0 {
		t.Errorf("second pass: %+v, %v; want no change", res, err)
	}

	svc := func(name string) string { id, _ := snap.Index().SPIFFEID(topology.ServiceSubject(name)); return id }
	edge1, edge2 := EdgeSPIFFEID(cityTD, "cloud", "edge-1"), EdgeSPIFFEID(cityTD, "cloud", "edge-2")
	waitSVIDs(t, ctx, agent.WorkloadSocket, []string{edge1, edge2, svc("telemetry"), svc("video-storage")})

	// edge-2 goes, and so does video-storage's backend.
	opts.Edges = []string{"cloud/edge-1"}
	doc.Services[1].Backends = nil
	snap = snapshotOf(t, doc)
	r = newReconciler(t, cl, nil, opts)
	if res, err = r.Reconcile(ctx, snap); err != nil || res.Deleted != 2 || res.Created+res.Updated+res.Failed != 0 || len(res.Skipped) != 0 {
		t.Errorf("after removing edge-2 and a backend: %+v, %v; want 2 deleted", res, err)
	}
	checkConvergedWith(t, ctx, cl, snap, opts)
	waitSVIDs(t, ctx, agent.WorkloadSocket, []string{edge1, svc("telemetry")})

	// No edges declared any more: a reconciler without edge options
	// deletes the entries it owns for them, and leaves the operator's alias.
	if res, err = newReconciler(t, cl, nil, DefaultOptions()).Reconcile(ctx, snap); err != nil || res.Deleted != 2 || res.Created+res.Updated+res.Failed != 0 {
		t.Errorf("without edges: %+v, %v; want 2 deleted", res, err)
	}
	checkConverged(t, ctx, cl, snap)
	if e, ok, err := cl.GetEntry(ctx, hostsAlias.ID); err != nil || !ok || e.SPIFFEID != hostsAlias.SPIFFEID {
		t.Errorf("the operator's hosts alias: %+v, %v, %v", e, ok, err)
	}
	waitSVIDs(t, ctx, agent.WorkloadSocket, nil)
}

// waitSVIDs waits until the agent's SDS (which it serves on its Workload
// API socket, and where the edge's Envoy gets its certificates) gives this
// process exactly the SVIDs want. It asks for every secret, as Envoy asks
// for its SVIDs by name. (The Workload API's FetchX509SVID would show one
// SVID per entry hint, and all of Vigil's entries have the hint "vigil".)
func waitSVIDs(t *testing.T, ctx context.Context, socket string, want []string) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sds := secretv3.NewSecretDiscoveryServiceClient(conn)
	slices.Sort(want)
	var got []string
	var last error
	deadline := time.Now().Add(30 * time.Second)
	for {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := sds.FetchSecrets(fctx, &discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"})
		cancel()
		got, last = nil, err
		for _, r := range resp.GetResources() {
			var sec tlsv3.Secret
			if err := r.UnmarshalTo(&sec); err != nil {
				t.Fatal(err)
			}
			if sec.GetTlsCertificate() != nil {
				got = append(got, sec.Name)
			}
		}
		slices.Sort(got)
		if err == nil && slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("SDS: SVIDs %v (err %v), want %v", got, last, want)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestRunFollowsLeadership drives Run through Update: nothing happens while
// this member does not lead; on becoming leader it reconciles everything;
// a quarantine is acted on at once.
func TestRunFollowsLeadership(t *testing.T) {
	_, cl := realServer(t)
	ctx := ctxFor(t, 2*time.Minute)
	var leader atomic.Bool
	r := newReconciler(t, cl, &leader, DefaultOptions())
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	doc := city(20)
	snap := snapshotOf(t, doc)
	r.Update(snap, Change{Document: true})
	time.Sleep(500 * time.Millisecond)
	if list, _ := cl.ListEntries(ctx, "vigil", ""); len(list) != 0 {
		t.Fatalf("a follower changed the server: %d entries", len(list))
	}

	leader.Store(true)
	testwait.For(t, 10*time.Second, "the new leader's full pass", func() bool {
		st := r.Status()
		return st.LastFull != nil && st.LastFull.Created == 24
	})
	checkConverged(t, ctx, cl, snap)

	q := topology.DeviceSubject("d-0000005")
	start := time.Now()
	r.Update(snapshotOf(t, doc, q), Change{Subjects: []topology.Subject{q}})
	testwait.For(t, 10*time.Second, "the quarantined device's entry to go", func() bool {
		_, found, err := cl.GetEntry(ctx, "vigil.device.d-0000005")
		return err == nil && !found
	})
	t.Logf("quarantine to entry deletion: %v", time.Since(start).Round(time.Millisecond))

	r.Update(snap, Change{Subjects: []topology.Subject{q}}) // released
	testwait.For(t, 10*time.Second, "the released device's entry to come back", func() bool {
		_, found, err := cl.GetEntry(ctx, "vigil.device.d-0000005")
		return err == nil && found
	})
	checkConverged(t, ctx, cl, snap)
}

// TestOnboardRealAgent onboards a gateway with a join token, runs a real
// spire-agent with it, fetches a device's SVID through the agent's
// Delegated Identity API as the gateway, then quarantines and releases the
// gateway.
func TestOnboardRealAgent(t *testing.T) {
	srv, cl := realServer(t)
	ctx := ctxFor(t, 2*time.Minute)
	opts := DefaultOptions()
	// This test process plays the gateway's bridge.
	opts.GatewaySelectors = []string{"unix:uid:" + strconv.Itoa(os.Getuid())}
	r := newReconciler(t, cl, nil, opts)
	doc := city(8)
	doc.DeviceClasses[2].Identity = topology.IdentityAgent // traffic cameras run their own agent
	snap := snapshotOf(t, doc)
	gw := topology.GatewaySubject("gw-00000")
	gwID, _ := snap.Index().SPIFFEID(gw)

	for _, tt := range []struct {
		s    topology.Subject
		snap *topology.Snapshot
		ttl  time.Duration
		want error
	}{
		{topology.DeviceSubject("d-0000000"), snap, 0, ErrNoAgent}, // a street light: delegated
		{topology.ServiceSubject("telemetry"), snap, 0, ErrNoAgent},
		{topology.GatewaySubject("gw-99999"), snap, 0, ErrNoSubject},
		{gw, snapshotOf(t, doc, gw), 0, ErrQuarantined},
		{gw, snap, 10 * time.Second, ErrTokenTTL},
	} {
		if _, err := r.Onboard(ctx, tt.snap, tt.s, tt.ttl); !errors.Is(err, tt.want) {
			t.Errorf("Onboard(%s, ttl %v): %v, want %v", tt.s, tt.ttl, err, tt.want)
		}
	}
	if _, err := r.Onboard(ctx, snap, topology.DeviceSubject("d-0000002"), 0); err != nil {
		t.Errorf("Onboard(a camera): %v", err)
	}

	tok, err := r.Onboard(ctx, snap, gw, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if tok.SPIFFEID != gwID || tok.AgentID != JoinTokenAgentID(cityTD, tok.Token) || !strings.Contains(tok.Bundle, "BEGIN CERTIFICATE") {
		t.Errorf("token: %+v", tok)
	}
	if got := agentsOf(t, ctx, r, snap, gw); len(got) != 1 || got[0].Attested {
		t.Fatalf("before the agent starts: %+v, want one binding, not attested", got)
	}
	if _, err := r.Reconcile(ctx, snap); err != nil {
		t.Fatal(err)
	}

	agent, err := srv.StartAgent("", tok.Token, gwID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("spire-agent log (tail):\n%s", agent.Tail(30))
		}
		agent.Stop()
		os.RemoveAll(agent.Dir)
	})
	got := agentsOf(t, ctx, r, snap, gw)
	if len(got) != 1 || !got[0].Attested || got[0].Agent.AttestationType != "join_token" || got[0].Agent.Banned || got[0].Agent.ExpiresAt.IsZero() {
		t.Fatalf("after the agent attested: %+v", got)
	}

	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	svid, err := FetchDeviceSVID(fctx, agent.AdminSocket, "d-0000000")
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := snap.Index().SPIFFEID(topology.DeviceSubject("d-0000000")); svid.ID.String() != want {
		t.Errorf("device SVID for %s, want %s", svid.ID, want)
	}
	if ttl := svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore); ttl > 6*time.Minute {
		t.Errorf("device SVID lives %v, want about the 5m default", ttl)
	}

	// Quarantine: the agent is banned, at once.
	qsnap := snapshotOf(t, doc, gw)
	res, err := r.reconcileSubjects(ctx, qsnap, []topology.Subject{gw})
	if err != nil || res.Banned != 1 {
		t.Fatalf("quarantine: %+v, %v; want the agent banned", res, err)
	}
	if got := agentsOf(t, ctx, r, qsnap, gw); len(got) != 1 || got[0].Agent == nil || !got[0].Agent.Banned {
		t.Fatalf("after the quarantine: %+v, want its agent banned", got)
	}
	if res, _ := r.Reconcile(ctx, qsnap); res.Banned+res.Evicted+res.Deleted != 0 {
		t.Errorf("a second pass while quarantined: %+v, want nothing more", res)
	}

	// Release: the banned agent is evicted and the binding goes; the
	// gateway needs a new token.
	res, err = r.Reconcile(ctx, snap)
	if err != nil || res.Evicted != 1 {
		t.Fatalf("release: %+v, %v; want the agent evicted", res, err)
	}
	if got := agentsOf(t, ctx, r, snap, gw); len(got) != 0 {
		t.Errorf("after the release: %+v, want no binding", got)
	}
	if _, err := r.Onboard(ctx, snap, gw, 0); err != nil {
		t.Errorf("onboarding again: %v", err)
	}
}

func agentsOf(t *testing.T, ctx context.Context, r *Reconciler, snap *topology.Snapshot, s topology.Subject) []BoundAgent {
	t.Helper()
	list, err := r.Agents(ctx, snap, s.Kind)
	if err != nil {
		t.Fatal(err)
	}
	for _, sa := range list {
		if sa.Subject == s {
			return sa.Agents
		}
	}
	t.Fatalf("%s not listed by Agents", s)
	return nil
}

// TestQuarantineDuringAFullPass quarantines a device while a long full
// pass (small batches, three in flight) is creating entries: the quarantine is applied
// before the pass ends, and the pass, computed before it, does not bring
// the device's entry back.
func TestQuarantineDuringAFullPass(t *testing.T) {
	_, cl := realServer(t)
	ctx := ctxFor(t, 2*time.Minute)
	var leader atomic.Bool
	leader.Store(true)
	r, err := NewReconciler(Config{Client: cl, Options: DefaultOptions(), IsLeader: leader.Load, BatchSize: 10, Parallel: 3,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	defer func() { stop(); <-done }()

	doc := city(600)
	r.Update(snapshotOf(t, doc), Change{Document: true})
	testwait.For(t, 30*time.Second, "the full pass to be under way", func() bool {
		list, _ := cl.ListEntries(ctx, "vigil", "")
		return len(list) >= 20
	})
	// The last device in ID order: its create comes in the pass's last batch.
	q := topology.DeviceSubject("d-0000599")
	qsnap := snapshotOf(t, doc, q)
	r.Update(qsnap, Change{Subjects: []topology.Subject{q}})
	testwait.For(t, 60*time.Second, "the full pass to end", func() bool { return r.Status().LastFull != nil })
	// Without the guard the full pass would create all 604 entries from its
	// older snapshot, and the quarantine would only delete one afterwards.
	if st := r.Status(); st.LastFull.Created != 603 || st.Pending {
		t.Errorf("full pass %+v, pending %v: want 603 created (the quarantined device left alone) and nothing pending", st.LastFull, st.Pending)
	}
	if _, found, err := cl.GetEntry(ctx, "vigil.device.d-0000599"); err != nil || found {
		t.Errorf("the quarantined device's entry: found %v, %v", found, err)
	}
	checkConverged(t, ctx, cl, qsnap)
}

// TestTPMEntriesRealServer keeps the entries of subjects onboarded by
// vigil_tpm on a real server: a class switched to TPM revokes the
// gateway's join-token binding and gets a TPM binding (and, in required
// mode, firmware aliases); the entries converge and a second pass changes
// nothing; a quarantine deletes them and creates the subject's ban record,
// a release brings them back and deletes the record (in a targeted pass
// and in a full one); a new AK changes the aliases' selectors; a digest
// replaced, or a firmware version removed from the document, loses its
// alias. (No agent attests with vigil_tpm here: that is the e2e's; the
// server merely lists none.)
func TestTPMEntriesRealServer(t *testing.T) {
	_, cl := realServer(t)
	ctx := ctxFor(t, 2*time.Minute)
	opts := DefaultOptions()
	r := newReconciler(t, cl, nil, opts)
	doc := city(12) // cameras: d-0000002, -5, -8, -11
	doc.DeviceClasses[2].Identity = topology.IdentityAgent
	gw0, gw1 := topology.GatewaySubject("gw-00000"), topology.GatewaySubject("gw-00001")
	gw0FP := akFP
	// snapOf is doc's snapshot with the gateways' AKs enrolled (gw-00000's
	// of fingerprint gw0FP) and the given subjects quarantined.
	snapOf := func(quarantined ...topology.Subject) *topology.Snapshot {
		st := map[topology.Subject]*topology.SubjectState{gw0: tpmState(false, nil, gw0FP), gw1: tpmState(false, nil, akFP)}
		for _, q := range quarantined {
			fp := ""
			if e := st[q]; e != nil && e.Enrollment != nil {
				fp = e.Enrollment.Fingerprint
			}
			st[q] = tpmState(true, nil, fp)
		}
		ix, err := topology.NewIndex(doc)
		if err != nil {
			t.Fatal(err)
		}
		return topology.NewSnapshot(7, 5, ix, topology.NewState().With(st))
	}
	snap := snapOf()
	tok, err := r.Onboard(ctx, snap, gw0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := r.Reconcile(ctx, snap); err != nil || res.Created != 12 || res.Deleted+res.Failed != 0 {
		t.Fatalf("before TPM: %+v, %v; want 12 created (8 delegated devices, 4 services)", res, err)
	}

	// gw-00000 onboards by TPM (required), gw-00001 too (onboard), and so
	// do the cameras.
	doc.DeviceClasses = append(doc.DeviceClasses,
		tpmClass("edge-req", "", topology.SPIRERequired, "5.0.0", "5.1.0"),
		tpmClass("edge-onb", "", topology.SPIREOnboard, "5.0.0"))
	doc.Gateways[0].Class, doc.Gateways[1].Class = "edge-req", "edge-onb"
	cam := tpmClass("traffic-camera", topology.IdentityAgent, topology.SPIREOnboard, "1.0.0")
	cam.RateLimit = doc.DeviceClasses[2].RateLimit
	doc.DeviceClasses[2] = cam
	snap = snapOf()
	if _, err := r.Onboard(ctx, snap, gw0, 0); !errors.Is(err, ErrTPMOnboarded) {
		t.Errorf("Onboard(gw-00000) once it onboards by TPM: %v, want ErrTPMOnboarded", err)
	}
	res, err := r.Reconcile(ctx, snap)
	// 3 for gw-00000 (binding, two aliases), 1 for gw-00001, 4 cameras;
	// the token binding goes.
	if err != nil || res.Created != 8 || res.Deleted != 1 || res.Updated+res.Failed+res.Banned+res.Evicted != 0 || res.Desired != 20 {
		t.Fatalf("after the switch to TPM: %+v, %v; want 8 created, 1 deleted, 20 desired", res, err)
	}
	if b, found, err := cl.GetEntry(ctx, tok.BindingID); err != nil || found {
		t.Errorf("the token binding: %+v, %v, %v; want it gone", b, found, err)
	}
	checkTPMConverged(t, ctx, cl, snap, opts)
	checkConverged(t, ctx, cl, snap)
	if res, err := r.Reconcile(ctx, snap); err != nil || res.Created+res.Updated+res.Deleted+res.Failed+res.Banned+res.Evicted != 0 {
		t.Errorf("second pass: %+v, %v; want no change", res, err)
	}
	if got, err := cl.ListAgentsOfType(ctx, TPMAttestor); err != nil || len(got) != 0 {
		t.Errorf("ListAgentsOfType(%s): %+v, %v; want none", TPMAttestor, got, err)
	}
	got := agentsOf(t, ctx, r, snap, gw0)
	if len(got) != 1 || got[0].BindingID != "vigil.agent.gateway.gw-00000.tpm" || got[0].AgentID != TPMAgentID(cityTD, gw0) || got[0].Attested {
		t.Errorf("Agents(gw-00000): %+v, want its TPM binding, not attested", got)
	}

	// Quarantine: a targeted pass deletes gw-00000's three entries and
	// creates its ban record; a full pass agrees. Release brings them back
	// and deletes the record.
	record := opts.banRecordID(gw0)
	qsnap := snapOf(gw0)
	if res, err := r.reconcileSubjects(ctx, qsnap, []topology.Subject{gw0}); err != nil || res.Deleted != 3 || res.Created != 1 || res.Updated+res.Failed != 0 {
		t.Errorf("quarantine: %+v, %v; want 3 deleted, 1 created (the ban record)", res, err)
	}
	if e, found, err := cl.GetEntry(ctx, record); err != nil || !found || e.SPIFFEID != TPMBanRecordID(cityTD, gw0) || e.ParentID != ServerID(cityTD) ||
		!slices.Equal(e.Selectors, []string{"vigil_tpm:vigil-ban:gateway/gw-00000"}) {
		t.Errorf("the ban record: %+v, found %v, %v", e, found, err)
	}
	checkTPMConverged(t, ctx, cl, qsnap, opts)
	if res, err := r.Reconcile(ctx, qsnap); err != nil || res.Created+res.Updated+res.Deleted+res.Failed != 0 {
		t.Errorf("full pass while quarantined: %+v, %v; want no change", res, err)
	}
	if got := agentsOf(t, ctx, r, qsnap, gw0); len(got) != 0 {
		t.Errorf("Agents(gw-00000) while quarantined: %+v, want none (the ban record is no binding)", got)
	}
	if res, err := r.reconcileSubjects(ctx, snap, []topology.Subject{gw0, gw1}); err != nil || res.Created != 3 || res.Deleted != 1 || res.Updated+res.Failed != 0 {
		t.Errorf("release: %+v, %v; want 3 created, 1 deleted (the ban record)", res, err)
	}
	if _, found, err := cl.GetEntry(ctx, record); err != nil || found {
		t.Errorf("the ban record after the release: found %v, %v", found, err)
	}
	checkTPMConverged(t, ctx, cl, snap, opts)

	// The same through full passes, for gw-00001 (onboard: one binding).
	qsnap = snapOf(gw1)
	if res, err := r.Reconcile(ctx, qsnap); err != nil || res.Deleted != 1 || res.Created != 1 || res.Updated+res.Failed != 0 {
		t.Errorf("quarantine, full pass: %+v, %v; want 1 deleted, 1 created (the ban record)", res, err)
	}
	if _, found, err := cl.GetEntry(ctx, opts.banRecordID(gw1)); err != nil || !found {
		t.Errorf("gw-00001's ban record: found %v, %v", found, err)
	}
	checkTPMConverged(t, ctx, cl, qsnap, opts)
	if res, err := r.Reconcile(ctx, snap); err != nil || res.Deleted != 1 || res.Created != 1 || res.Updated+res.Failed != 0 {
		t.Errorf("release, full pass: %+v, %v; want 1 deleted (the ban record), 1 created", res, err)
	}
	checkTPMConverged(t, ctx, cl, snap, opts)

	// gw-00000's AK is enrolled again: its aliases name the new one at the
	// next pass.
	gw0FP = akFP2
	snap = snapOf()
	if res, err := r.reconcileSubjects(ctx, snap, []topology.Subject{gw0}); err != nil || res.Updated != 2 || res.Created+res.Deleted+res.Failed != 0 {
		t.Errorf("after a new AK: %+v, %v; want the 2 aliases updated", res, err)
	}
	checkTPMConverged(t, ctx, cl, snap, opts)

	// 5.0.0's digest is replaced: its alias goes, another comes.
	req := &doc.DeviceClasses[len(doc.DeviceClasses)-2]
	req.Attestation.Firmware[0].SHA256 = "b" + fwSHA[1:]
	snap = snapOf()
	if res, err := r.Reconcile(ctx, snap); err != nil || res.Deleted != 1 || res.Created != 1 || res.Updated+res.Failed != 0 {
		t.Errorf("after replacing 5.0.0's digest: %+v, %v; want 1 deleted, 1 created", res, err)
	}
	checkTPMConverged(t, ctx, cl, snap, opts)

	// 5.1.0 is no longer a reference value: its alias goes. gw-00001 moves
	// to required: its binding is reparented, and it gets its alias.
	req.Attestation.Firmware = req.Attestation.Firmware[:1]
	doc.Gateways[1].Class = "edge-req"
	snap = snapOf()
	if res, err := r.Reconcile(ctx, snap); err != nil || res.Deleted != 1 || res.Updated != 1 || res.Created != 1 || res.Failed != 0 {
		t.Errorf("after dropping 5.1.0 and moving gw-00001 to required: %+v, %v; want 1 deleted, 1 updated, 1 created", res, err)
	}
	checkTPMConverged(t, ctx, cl, snap, opts)

	// Back to join tokens everywhere: every TPM entry goes, and a
	// quarantined subject's ban record with them.
	qsnap = snapOf(gw0)
	if res, err := r.Reconcile(ctx, qsnap); err != nil || res.Deleted != 2 || res.Created != 1 || res.Failed != 0 {
		t.Errorf("quarantine gw-00000 again: %+v, %v; want 2 deleted, 1 created", res, err)
	}
	doc.Gateways[0].Class, doc.Gateways[1].Class = "", ""
	doc.DeviceClasses[2].Attestation = nil
	qsnap = snapOf(gw0) // still quarantined: no longer onboarded by TPM, it has no ban record
	if res, err := r.Reconcile(ctx, qsnap); err != nil || res.Deleted != 7 || res.Created+res.Updated+res.Failed != 0 {
		t.Errorf("back to join tokens: %+v, %v; want 7 deleted", res, err)
	}
	checkTPMConverged(t, ctx, cl, qsnap, opts)
	snap = snapOf()
	if list, err := cl.ListEntries(ctx, opts.bindingHint(), ""); err != nil || len(list) != 0 {
		t.Errorf("entries left with the binding hint: %+v, %v", list, err)
	}
	if _, err := r.Onboard(ctx, snap, gw0, 0); err != nil {
		t.Errorf("Onboard(gw-00000) with join tokens again: %v", err)
	}
}

// checkTPMConverged asserts that the server holds exactly the TPM entries
// snap wants.
func checkTPMConverged(t *testing.T, ctx context.Context, cl *Client, snap *topology.Snapshot, o Options) {
	t.Helper()
	want, errs := DesiredTPM(snap, o)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	listed, err := cl.ListEntries(ctx, o.bindingHint(), "")
	if err != nil {
		t.Fatal(err)
	}
	_, have := o.splitTPM(listed)
	if d := Diff(want, have); d.Len() != 0 {
		t.Errorf("server's TPM entries differ from the topology's: %+v", d)
	}
}
