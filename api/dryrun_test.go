package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

// fakeDryRunner records the calls it gets and answers a fixed report.
type fakeDryRunner struct {
	mu    sync.Mutex
	calls []DryRunOptions
	cands []*topology.Index
	err   error
}

func (f *fakeDryRunner) DryRun(_ context.Context, cand *topology.Index, opts DryRunOptions) (*DryRunResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, opts)
	f.cands = append(f.cands, cand)
	if f.err != nil {
		return nil, f.err
	}
	return &DryRunResult{
		Current: DryRunDocument{Revision: 7, DocumentRevision: 3, Flows: 1},
		Log:     DryRunLog{Path: "/data/decisions.log", Lines: 3, MaxLines: opts.MaxLines},
		Report:  json.RawMessage(`{"totals":{"allow_to_deny":2}}`),
	}, nil
}

func (f *fakeDryRunner) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

// startDryRunMembers is startMembers with a dry runner per member (nil for
// none).
func startDryRunMembers(t *testing.T, runners ...DryRunner) []*member {
	t.Helper()
	tokens, err := ParseTokens([]byte(testToken))
	if err != nil {
		t.Fatal(err)
	}
	var members []*member
	var trans []*hraft.InmemTransport
	for i, dr := range runners {
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
		srv := httptest.NewServer(NewServer(ServerConfig{Store: s, Tokens: tokens, PeerToken: PeerToken(clusterKey), DryRun: dr, Logger: quiet()}))
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

// TestDryRunIsAnsweredByTheMemberAskedAndChangesNothing: a dry run sent to
// a follower is answered by that follower's dry runner (not forwarded to
// the leader) with the options asked for; an invalid document is refused
// exactly as PUT /v1/topology refuses it, before any dry run; nothing is
// written either way.
func TestDryRunIsAnsweredByTheMemberAskedAndChangesNothing(t *testing.T) {
	leaderRunner, followerRunner := &fakeDryRunner{}, &fakeDryRunner{}
	ms := startDryRunMembers(t, leaderRunner, followerRunner)
	ctx := testCtx(t)
	rev, err := ms[0].client().ApplyTopology(ctx, []byte(goodDoc))
	if err != nil {
		t.Fatal(err)
	}
	follower := ms[1]
	if _, err := follower.store.WaitFor(ctx, rev); err != nil {
		t.Fatal(err)
	}
	c := follower.client()

	candidate := strings.Replace(goodDoc, "flows:\n  - name: t\n    from: {classes: [sensor]}\n    to: {service: telemetry}\n", "flows: []\n", 1)
	res, err := c.DryRunTopology(ctx, []byte(candidate), DryRunOptions{MaxLines: 500, Since: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var report bytes.Buffer
	json.Compact(&report, res.Report)
	if res.Member != "m2" || res.Applied || res.Candidate.Flows != 0 || res.Candidate.Devices != 2 ||
		res.Current.Revision != 7 || res.Log.Lines != 3 || report.String() != `{"totals":{"allow_to_deny":2}}` {
		t.Errorf("result %+v", res)
	}
	if followerRunner.count() != 1 || leaderRunner.count() != 0 {
		t.Fatalf("dry runs: follower %d, leader %d; want the follower's only", followerRunner.count(), leaderRunner.count())
	}
	if o := followerRunner.calls[0]; o.MaxLines != 500 || o.Since != time.Hour {
		t.Errorf("options %+v", o)
	}
	if cand := followerRunner.cands[0]; cand.NumFlows() != 0 || cand.NumDevices() != 2 {
		t.Errorf("candidate: %d flows, %d devices", cand.NumFlows(), cand.NumDevices())
	}
	// Without options: the default bound.
	if _, err := c.DryRunTopology(ctx, []byte(candidate), DryRunOptions{}); err != nil {
		t.Fatal(err)
	}
	if o := followerRunner.calls[1]; o.MaxLines != DefaultDryRunLines || o.Since != 0 {
		t.Errorf("default options %+v", o)
	}

	// An invalid document: 422 with every problem, as for PUT; a syntax
	// error: 400. No dry run is made.
	bad := strings.Replace(goodDoc, "to: {service: telemetry}", "to: {service: ghost}", 1)
	_, err = c.DryRunTopology(ctx, []byte(bad), DryRunOptions{})
	e := apiError(t, err, 422, CodeInvalidDocument)
	_, putErr := c.ApplyTopology(ctx, []byte(bad))
	pe := apiError(t, putErr, 422, CodeInvalidDocument)
	if fmt.Sprint(e.Errors) != fmt.Sprint(pe.Errors) || len(e.Errors) != 1 || e.Errors[0].Path != "flows[0].to.service" {
		t.Errorf("dry run problems %v, PUT problems %v", e.Errors, pe.Errors)
	}
	_, err = c.DryRunTopology(ctx, []byte("apiVersion: vigil/v1\nbogus: 1\n"), DryRunOptions{})
	apiError(t, err, 400, CodeBadDocument)
	for _, q := range []string{"max_lines=0", "max_lines=x", fmt.Sprintf("max_lines=%d", MaxDryRunLines+1), "since=-1h", "since=soon"} {
		req, _ := http.NewRequest("POST", follower.srv.URL+"/v1/topology/dry-run?"+q, strings.NewReader(candidate))
		req.Header.Set("Authorization", "Bearer "+aliceToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("?%s: status %d, want 400", q, resp.StatusCode)
		}
	}
	if followerRunner.count() != 2 {
		t.Errorf("%d dry runs, want 2: refused requests must not reach the dry runner", followerRunner.count())
	}

	// No token: 401.
	req, _ := http.NewRequest("POST", follower.srv.URL+"/v1/topology/dry-run", strings.NewReader(candidate))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without a token: %d, want 401", resp.StatusCode)
	}

	// Nothing was written.
	for _, m := range ms {
		if got := m.store.Current(); got.Revision() != rev || got.Index().NumFlows() != 1 {
			t.Errorf("%s: revision %d (want %d), %d flows", m.store.ID(), got.Revision(), rev, got.Index().NumFlows())
		}
	}

	// The dry runner's own error is the answer.
	followerRunner.err = &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "member m2 keeps no decision log"}
	_, err = c.DryRunTopology(ctx, []byte(candidate), DryRunOptions{})
	if e := apiError(t, err, 404, CodeNotFound); e.Message != "member m2 keeps no decision log" {
		t.Errorf("message %q", e.Message)
	}
}

func TestNoDryRunWithoutADryRunner(t *testing.T) {
	m := startDryRunMembers(t, nil)[0]
	_, err := m.client().DryRunTopology(testCtx(t), []byte(goodDoc), DryRunOptions{})
	apiError(t, err, 404, CodeNotFound)
}
