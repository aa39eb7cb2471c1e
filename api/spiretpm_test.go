package api

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/vigil-iot/vigil/internal/spiretpm"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

const pluginToken = "vigil-tpm-plugin-token-0123456789abcdef"

// fakeTPMAttestor answers the vigil_tpm routes as the leader would, and a
// follower's attestation with raft.NotLeaderError, so that the API
// forwards it; answers name the member that gave them.
type fakeTPMAttestor struct {
	store *raft.Store
}

func (f *fakeTPMAttestor) Challenge(string) (ChallengeResponse, error) {
	return ChallengeResponse{}, nil
}
func (f *fakeTPMAttestor) Attest(context.Context, string, []byte) (AttestResponse, error) {
	return AttestResponse{}, nil
}
func (f *fakeTPMAttestor) Enroll(context.Context, string, string, EnrollRequest) (EnrollResponse, error) {
	return EnrollResponse{}, nil
}

func (f *fakeTPMAttestor) TPMChallenge(_ context.Context, req spiretpm.ChallengeRequest) (spiretpm.ChallengeResponse, error) {
	if req.Subject.Name == "gw-9" {
		return spiretpm.ChallengeResponse{}, &Error{Status: http.StatusForbidden, Code: CodeRefused, Message: "gateway gw-9 is quarantined: stolen"}
	}
	return spiretpm.ChallengeResponse{Nonce: f.store.ID()}, nil
}

func (f *fakeTPMAttestor) TPMAttest(_ context.Context, req spiretpm.AttestRequest) (spiretpm.AttestResponse, error) {
	if !f.store.IsLeader() {
		id, addr := f.store.Leader()
		return spiretpm.AttestResponse{}, &raft.NotLeaderError{LeaderID: id, LeaderAddr: addr}
	}
	return spiretpm.AttestResponse{AgentID: "answered by " + f.store.ID() + " for " + req.Subject.String()}, nil
}

// startTPMMembers is startMembers with a fakeTPMAttestor and the plugin's
// token on every member (withPluginTokens), or none.
func startTPMMembers(t *testing.T, n int, withPluginTokens bool) []*member {
	t.Helper()
	tokens, err := ParseTokens([]byte(testToken))
	if err != nil {
		t.Fatal(err)
	}
	tokens.add(PeerActor, PeerToken(clusterKey))
	var pluginTokens *Tokens
	if withPluginTokens {
		if pluginTokens, err = ParseTokens([]byte("spire-server:" + pluginToken)); err != nil {
			t.Fatal(err)
		}
	}
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
		srv := httptest.NewServer(NewServer(ServerConfig{Store: s, Tokens: tokens, SPIRETPMTokens: pluginTokens,
			PeerToken: PeerToken(clusterKey), Attestor: &fakeTPMAttestor{store: s}, Logger: quiet()}))
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

// TestSPIRETPMTokensReachOnlyTheirRoutes: the plugin's token is answered
// 401 everywhere but the two vigil_tpm routes, where operators' tokens
// work too; an attestation at a follower is forwarded to the leader with
// the plugin's token, which the leader accepts.
func TestSPIRETPMTokensReachOnlyTheirRoutes(t *testing.T) {
	ms := startTPMMembers(t, 2, true)
	ctx := testCtx(t)
	leader, follower := ms[0], ms[1]
	if _, err := leader.client().ApplyTopology(ctx, []byte(goodDoc)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ method, path string }{
		{"PUT", "/v1/topology"},
		{"GET", "/v1/topology"},
		{"GET", "/v1/devices/s-1"},
		{"POST", "/v1/devices/s-1/quarantine"},
		{"POST", "/v1/devices/s-1/challenge"},
		{"POST", "/v1/devices/s-1/attestations"},
		{"POST", "/v1/devices/s-1/enroll"},
		{"POST", "/v1/gateways/gw-1/enroll"},
		{"POST", "/v1/internal/attestation-results"},
		{"POST", "/v1/state"},
		{"POST", "/v1/cluster/join"},
	} {
		req, _ := http.NewRequest(c.method, follower.srv.URL+c.path, strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+pluginToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s %s with the plugin's token: %d, want 401", c.method, c.path, resp.StatusCode)
		}
	}
	gw1 := spiretpm.AttestRequest{Subject: topology.GatewaySubject("gw-1"), Evidence: []byte("{}")}
	for _, m := range ms {
		for name, cl := range map[string]*Client{"the plugin's": NewClient(m.srv.URL, pluginToken), "an operator's": m.client()} {
			ch, err := cl.SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: topology.GatewaySubject("gw-1")})
			if err != nil || ch.Nonce != m.store.ID() {
				t.Errorf("challenge at %s with %s token: %+v, %v (want it answered there)", m.store.ID(), name, ch, err)
			}
			got, err := cl.SPIRETPMAttest(ctx, gw1)
			if err != nil || got.AgentID != "answered by m1 for gateway/gw-1" {
				t.Errorf("attest at %s with %s token: %+v, %v (want it answered by the leader)", m.store.ID(), name, got, err)
			}
		}
	}
	_, err := NewClient(follower.srv.URL, pluginToken).SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: topology.GatewaySubject("gw-9")})
	if e := apiError(t, err, http.StatusForbidden, CodeRefused); e.Message != "gateway gw-9 is quarantined: stolen" {
		t.Errorf("refusal message %q", e.Message)
	}
	_, err = NewClient(follower.srv.URL, "wrong-token-wrong-token-wrong-token").SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: topology.GatewaySubject("gw-1")})
	apiError(t, err, http.StatusUnauthorized, CodeUnauthenticated)
}

// TestSPIRETPMRoutesWithoutTokenFile: without --spire-tpm-token-file only
// operators reach the routes.
func TestSPIRETPMRoutesWithoutTokenFile(t *testing.T) {
	m := startTPMMembers(t, 1, false)[0]
	ctx := testCtx(t)
	_, err := NewClient(m.srv.URL, pluginToken).SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: topology.GatewaySubject("gw-1")})
	apiError(t, err, http.StatusUnauthorized, CodeUnauthenticated)
	if _, err := m.client().SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: topology.GatewaySubject("gw-1")}); err != nil {
		t.Fatal(err)
	}
}

// TestSPIRETPMRoutesNeedTheirAttestor: a member whose attestor does not
// serve vigil_tpm answers 404, as it does gateway enrollment.
func TestSPIRETPMRoutesNeedTheirAttestor(t *testing.T) {
	m := startMembers(t, 1)[0]
	ctx := testCtx(t)
	_, err := m.client().SPIRETPMChallenge(ctx, spiretpm.ChallengeRequest{Subject: topology.GatewaySubject("gw-1")})
	apiError(t, err, http.StatusNotFound, CodeNotFound)
	_, err = m.client().SPIRETPMAttest(ctx, spiretpm.AttestRequest{Subject: topology.GatewaySubject("gw-1")})
	apiError(t, err, http.StatusNotFound, CodeNotFound)
	_, err = m.client().EnrollGateway(ctx, "gw-1", EnrollRequest{TPMAK: "x"})
	apiError(t, err, http.StatusNotFound, CodeNotFound)
}

func TestTokensShared(t *testing.T) {
	ops, err := ParseTokens([]byte("alice:alice-token-0123456789abcdef\nbob:bob-token-0123456789abcdef0\n"))
	if err != nil {
		t.Fatal(err)
	}
	spire, _ := ParseTokens([]byte("spire:spire-token-0123456789abcdef\n"))
	if name := spire.Shared(ops); name != "" {
		t.Fatalf("Shared = %q for distinct tokens", name)
	}
	reused, _ := ParseTokens([]byte("spire:bob-token-0123456789abcdef0\n"))
	if name := reused.Shared(ops); name != "spire" {
		t.Fatalf("Shared = %q, want spire", name)
	}
	var none *Tokens
	if none.Shared(ops) != "" {
		t.Fatal("a nil set shares a token")
	}
}
