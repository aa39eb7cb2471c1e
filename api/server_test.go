package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

const (
	testToken  = "alice:0123456789abcdefghijklmnopqrstuv"
	aliceToken = "0123456789abcdefghijklmnopqrstuv"
)

var clusterKey = []byte(strings.Repeat("k", 32))

const goodDoc = `apiVersion: vigil/v1
trustDomain: city.example
zones:
  - name: north
  - name: cloud
gateways:
  - name: gw-1
    zone: north
deviceClasses:
  - name: sensor
devices:
  - name: s-1
    class: sensor
    gateway: gw-1
  - name: s-2
    class: sensor
    gateway: gw-1
services:
  - name: telemetry
    zone: cloud
    protocol: http
    hosts: [telemetry.city.example]
flows:
  - name: t
    from: {classes: [sensor]}
    to: {service: telemetry}
`

type member struct {
	store *raft.Store
	srv   *httptest.Server
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startMembers runs n members on raft's in-memory transport, each with its
// API on an httptest server; the first founds the cluster.
func startMembers(t *testing.T, n int) []*member {
	t.Helper()
	tokens, err := ParseTokens([]byte(testToken))
	if err != nil {
		t.Fatal(err)
	}
	tokens.add(PeerActor, PeerToken(clusterKey))
	var members []*member
	var trans []*hraft.InmemTransport
	for i := range n {
		id := fmt.Sprintf("m%d", i+1)
		_, tr := hraft.NewInmemTransport(hraft.ServerAddress(id))
		for _, other := range trans {
			tr.Connect(other.LocalAddr(), other)
			other.Connect(tr.LocalAddr(), tr)
		}
		trans = append(trans, tr)
		s, err := raft.Open(raft.Config{
			ID: id, DataDir: t.TempDir(), Transport: tr, Bootstrap: i == 0, Logger: quiet(), RaftLogLevel: "off",
			HeartbeatTimeout: 250 * time.Millisecond, ElectionTimeout: 250 * time.Millisecond, LeaderLeaseTimeout: 125 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(NewServer(ServerConfig{Store: s, Tokens: tokens, PeerToken: PeerToken(clusterKey), Logger: quiet()}))
		t.Cleanup(func() { srv.Close(); s.Close() })
		members = append(members, &member{store: s, srv: srv})
	}
	ctx := testCtx(t)
	leader := members[0].store
	for !leader.IsLeader() {
		time.Sleep(10 * time.Millisecond)
	}
	for _, m := range members {
		reg := raft.Member{ID: m.store.ID(), RaftAddr: m.store.Addr(), APIAddr: m.srv.Listener.Addr().String()}
		if m.store == leader {
			err = leader.RegisterMember(ctx, reg)
		} else {
			err = leader.AddVoter(ctx, reg)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return members
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (m *member) client() *Client { return NewClient(m.srv.URL, aliceToken) }

func apiError(t *testing.T, err error, status int, code string) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, want an *api.Error", err)
	}
	if e.Status != status || e.Code != code {
		t.Fatalf("got %d %s (%s), want %d %s", e.Status, e.Code, e.Message, status, code)
	}
	return e
}

func TestEveryV1EndpointNeedsAToken(t *testing.T) {
	m := startMembers(t, 1)[0]
	for _, tc := range []struct{ method, path, auth string }{
		{"GET", "/v1/topology", ""},
		{"PUT", "/v1/topology", "Bearer wrong-token-wrong-token-wrong"},
		{"GET", "/v1/devices/s-1", "Basic YWxpY2U6cHc="},
		{"POST", "/v1/devices/s-1/quarantine", "Bearer "},
		{"POST", "/v1/state", ""},
		{"GET", "/v1/cluster/status", ""},
		{"POST", "/v1/cluster/join", ""},
		{"DELETE", "/v1/cluster/members/m1", ""},
	} {
		req, _ := http.NewRequest(tc.method, m.srv.URL+tc.path, strings.NewReader("{}"))
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s %s with %q: status %d, want 401", tc.method, tc.path, tc.auth, resp.StatusCode)
		}
	}
	if err := NewClient(m.srv.URL, "").Health(testCtx(t)); err != nil {
		t.Errorf("healthz needs no token, got %v", err)
	}
}

func TestInvalidDocumentListsEveryProblemAndChangesNothing(t *testing.T) {
	m := startMembers(t, 1)[0]
	ctx := testCtx(t)
	c := m.client()
	if _, err := c.Topology(ctx); err == nil {
		t.Fatal("topology before any apply should be 404")
	} else {
		apiError(t, err, 404, CodeNotFound)
	}
	rev, err := c.ApplyTopology(ctx, []byte(goodDoc))
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(goodDoc, "class: sensor\n    gateway: gw-1\n  - name: s-2", "class: nope\n    gateway: gw-1\n  - name: s-2", 1)
	bad = strings.Replace(bad, "to: {service: telemetry}", "to: {service: ghost}", 1)
	_, err = c.ApplyTopology(ctx, []byte(bad))
	e := apiError(t, err, 422, CodeInvalidDocument)
	want := []topology.FieldError{
		{Path: "devices[0].class", Line: 13, Message: `unknown device class "nope"`},
		{Path: "flows[0].to.service", Line: 26, Message: `unknown service "ghost"`},
	}
	if fmt.Sprint(e.Errors) != fmt.Sprint(want) {
		t.Fatalf("errors:\n got %v\nwant %v", e.Errors, want)
	}
	_, err = c.ApplyTopology(ctx, []byte("apiVersion: vigil/v1\nbogus: 1\n"))
	apiError(t, err, 400, CodeBadDocument)
	got, err := c.Topology(ctx)
	if err != nil || got.Revision != rev || len(got.Document.Devices) != 2 {
		t.Fatalf("after bad applies: revision %d (want %d), err %v", got.Revision, rev, err)
	}
}

func TestQuarantineAndRelease(t *testing.T) {
	m := startMembers(t, 1)[0]
	ctx := testCtx(t)
	c := m.client()
	if _, err := c.ApplyTopology(ctx, []byte(goodDoc)); err != nil {
		t.Fatal(err)
	}
	_, err := c.Quarantine(ctx, topology.KindDevice, "s-1", "  ")
	apiError(t, err, 400, CodeBadRequest)
	_, err = c.Quarantine(ctx, topology.KindDevice, "ghost", "why")
	apiError(t, err, 404, CodeNotFound)
	s, err := c.Quarantine(ctx, topology.KindDevice, "s-1", "tamper switch")
	if err != nil {
		t.Fatal(err)
	}
	if !s.Quarantined || s.State.Quarantine.By != "alice" || s.State.Quarantine.Reason != "tamper switch" {
		t.Fatalf("quarantine recorded as %+v", s.State.Quarantine)
	}
	if s.SPIFFEID != "spiffe://city.example/zone/north/device/s-1" {
		t.Fatalf("SPIFFE ID %q", s.SPIFFEID)
	}
	g, err := c.Quarantine(ctx, topology.KindGateway, "gw-1", "stolen")
	if err != nil || !g.Quarantined || g.Devices != 2 {
		t.Fatalf("gateway quarantine: %+v %v", g, err)
	}
	s, err = c.Release(ctx, topology.KindDevice, "s-1")
	if err != nil || s.Quarantined {
		t.Fatalf("release: %+v %v", s, err)
	}
	_, err = c.UpdateState(ctx, []raft.StateOp{{Subject: topology.DeviceSubject("s-2"), Op: raft.OpSetRisk, Risk: &topology.Risk{Score: 500}}})
	apiError(t, err, 422, CodeRejected)
	// Unknown fields in a request body are refused, not ignored.
	req, _ := http.NewRequest("POST", m.srv.URL+"/v1/devices/s-2/quarantine", strings.NewReader(`{"reason":"x","force":true}`))
	req.Header.Set("Authorization", "Bearer "+aliceToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("unknown field: status %d, want 400", resp.StatusCode)
	}
}

func TestWritesAtAFollowerAreForwardedAndReadableThere(t *testing.T) {
	ms := startMembers(t, 3)
	ctx := testCtx(t)
	var followers []*member
	leaderID := ""
	for _, m := range ms {
		if m.store.IsLeader() {
			leaderID = m.store.ID()
		} else {
			followers = append(followers, m)
		}
	}
	if len(followers) != 2 || leaderID == "" {
		t.Fatalf("want one leader and two followers, have leader %q and %d followers", leaderID, len(followers))
	}
	c := followers[0].client()
	rev, err := c.ApplyTopology(ctx, []byte(goodDoc))
	if err != nil {
		t.Fatalf("apply through a follower: %v", err)
	}
	q, err := c.Quarantine(ctx, topology.KindDevice, "s-2", "forwarded")
	if err != nil {
		t.Fatalf("quarantine through a follower: %v", err)
	}
	if q.Revision <= rev {
		t.Fatalf("quarantine revision %d is not after %d", q.Revision, rev)
	}
	// Read-your-writes at another follower.
	other := followers[1].client()
	other.MinRevision = q.Revision
	s, err := other.Subject(ctx, topology.KindDevice, "s-2")
	if err != nil || !s.Quarantined || s.Revision < q.Revision {
		t.Fatalf("read at the other follower: %+v %v", s, err)
	}
	st, err := c.ClusterStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 3 || st.LeaderID != leaderID {
		t.Fatalf("status: %+v", st)
	}
	for _, m := range st.Members {
		if !m.Reachable || m.APIAddr == "" {
			t.Errorf("member %s: reachable=%v api=%q err=%q", m.ID, m.Reachable, m.APIAddr, m.Error)
		}
	}
}

func TestMinRevisionWaitIsBounded(t *testing.T) {
	m := startMembers(t, 1)[0]
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	c := m.client()
	c.MinRevision = 1 << 40
	if _, err := c.Topology(ctx); err == nil {
		t.Fatal("a read of a revision from the future succeeded")
	}
	if _, err := c.Self(ctx); err == nil {
		t.Fatal("a status read of a revision from the future succeeded")
	}
}

func TestTokenFileFormat(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		ok         bool
	}{
		{"named", "ops:" + aliceToken, true},
		{"bare", aliceToken, true},
		{"comments", "# tokens\n\nops:" + aliceToken + "\n", true},
		{"short", "ops:short", false},
		{"reserved name", PeerActor + ":" + aliceToken, false},
		{"empty", "# nothing\n", false},
	} {
		_, err := ParseTokens([]byte(tc.file))
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestSnapshotOnDemand(t *testing.T) {
	m := startMembers(t, 1)[0]
	ctx := testCtx(t)
	c := m.client()
	rev, err := c.ApplyTopology(ctx, []byte(goodDoc))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second has nothing new to write, and is no error
		got, err := c.Snapshot(ctx)
		if err != nil || got != rev {
			t.Fatalf("snapshot: revision %d (want %d), %v", got, rev, err)
		}
	}
}

func TestStateBatchesCannotForgeWhoOrAttest(t *testing.T) {
	m := startMembers(t, 1)[0]
	ctx := testCtx(t)
	c := m.client()
	if _, err := c.ApplyTopology(ctx, []byte(goodDoc)); err != nil {
		t.Fatal(err)
	}
	forged := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	rev, err := c.UpdateState(ctx, []raft.StateOp{{Subject: topology.DeviceSubject("s-1"), Op: raft.OpQuarantine,
		Quarantine: &topology.Quarantine{Reason: "r", By: "someone-else", Since: forged}}})
	if err != nil {
		t.Fatal(err)
	}
	c.MinRevision = rev
	s, err := c.Subject(ctx, topology.KindDevice, "s-1")
	if err != nil {
		t.Fatal(err)
	}
	if q := s.State.Quarantine; q.By != "alice" || q.Since.Equal(forged) {
		t.Fatalf("quarantine recorded as by %q since %v; want the caller and the member's clock", q.By, q.Since)
	}
	_, err = c.UpdateState(ctx, []raft.StateOp{{Subject: topology.DeviceSubject("s-2"), Op: raft.OpSetAttestation,
		Attestation: &topology.Attestation{Method: "tpm", VerifiedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}}})
	apiError(t, err, 400, CodeBadRequest)
	// A nonce is Vigil's own: an operator's would be remembered by every
	// replica for as long as it says.
	_, err = c.UpdateState(ctx, []raft.StateOp{{Subject: topology.DeviceSubject("s-2"), Op: raft.OpQuarantine,
		Quarantine: &topology.Quarantine{Reason: "r"}, Nonce: strings.Repeat("ab", 32), NonceExpires: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)}})
	apiError(t, err, 400, CodeBadRequest)
}

func TestTokensAreNeverSentInClearTextOffThisMachine(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:7070":            true,
		"http://localhost:7070":     true,
		"[::1]:7070":                true,
		"10.0.0.2:7070":             false,
		"http://vigil.example:7070": false,
		"https://10.0.0.2:7070":     true,
	} {
		err := NewClient(addr, aliceToken).Health(context.Background())
		if refused := errors.Is(err, ErrCleartext); refused == ok {
			t.Errorf("%s: refused=%v (err %v), want refused=%v", addr, refused, err, !ok)
		}
	}
}
