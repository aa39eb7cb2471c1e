package spire

import (
	"context"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// fakeSPIRE is an in-memory SPIRE server API, just what the reconciler
// calls, for tests that need agents of any attestation type (the real
// server only has those that attested) or a failing call. It records the
// changing calls in order.
type fakeSPIRE struct {
	entryv1.UnimplementedEntryServer
	agentv1.UnimplementedAgentServer
	bundlev1.UnimplementedBundleServer

	mu      sync.Mutex
	td      string
	entries map[string]*types.Entry
	agents  map[string]*types.Agent
	// calls are the changing calls, in order: "ban <id>", "evict <id>",
	// "delete <entry id>", "create <entry id>", "update <entry id>"; and
	// "list agents of <type>".
	calls []string
	// failEvict makes DeleteAgent of these agents fail (Unavailable).
	failEvict map[string]bool
}

// startFakeSPIRE serves a fakeSPIRE on a unix socket and returns it with a
// client.
func startFakeSPIRE(t *testing.T, trustDomain string) (*fakeSPIRE, *Client) {
	t.Helper()
	dir, err := os.MkdirTemp("", "fakespire")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSPIRE{td: trustDomain, entries: map[string]*types.Entry{}, agents: map[string]*types.Agent{}, failEvict: map[string]bool{}}
	srv := grpc.NewServer()
	entryv1.RegisterEntryServer(srv, f)
	agentv1.RegisterAgentServer(srv, f)
	bundlev1.RegisterBundleServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	cl, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return f, cl
}

// addAgent adds an attested agent.
func (f *fakeSPIRE) addAgent(a Agent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, _ := protoID(a.ID)
	pa := &types.Agent{Id: id, AttestationType: a.AttestationType, Banned: a.Banned, CanReattest: a.CanReattest}
	for _, s := range a.Selectors {
		typ, value, _ := strings.Cut(s, ":")
		pa.Selectors = append(pa.Selectors, &types.Selector{Type: typ, Value: value})
	}
	f.agents[a.ID] = pa
}

// agent returns an agent's record (ok false: none).
func (f *fakeSPIRE) agent(id string) (Agent, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pa, ok := f.agents[id]
	if !ok {
		return Agent{}, false
	}
	return agentFromProto(pa), true
}

// addEntries adds entries as the server holds them.
func (f *fakeSPIRE) addEntries(t *testing.T, es ...Entry) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range es {
		pe, err := toProto(&es[i])
		if err != nil {
			t.Fatal(err)
		}
		f.entries[pe.Id] = pe
	}
}

func (f *fakeSPIRE) hasEntry(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.entries[id]
	return ok
}

// takeCalls returns the calls recorded since the last take.
func (f *fakeSPIRE) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func (f *fakeSPIRE) GetBundle(context.Context, *bundlev1.GetBundleRequest) (*types.Bundle, error) {
	return &types.Bundle{TrustDomain: f.td}, nil
}

func (f *fakeSPIRE) ListEntries(_ context.Context, req *entryv1.ListEntriesRequest) (*entryv1.ListEntriesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &entryv1.ListEntriesResponse{}
	for _, id := range slices.Sorted(maps.Keys(f.entries)) {
		e := f.entries[id]
		if h := req.Filter.GetByHint(); h != nil && e.Hint != h.Value {
			continue
		}
		if s := req.Filter.GetBySpiffeId(); s != nil && idString(s) != idString(e.SpiffeId) {
			continue
		}
		resp.Entries = append(resp.Entries, proto.Clone(e).(*types.Entry))
	}
	return resp, nil
}

func (f *fakeSPIRE) GetEntry(_ context.Context, req *entryv1.GetEntryRequest) (*types.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.entries[req.Id]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such entry")
	}
	return proto.Clone(e).(*types.Entry), nil
}

func (f *fakeSPIRE) BatchCreateEntry(_ context.Context, req *entryv1.BatchCreateEntryRequest) (*entryv1.BatchCreateEntryResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &entryv1.BatchCreateEntryResponse{}
	for _, e := range req.Entries {
		f.calls = append(f.calls, "create "+e.Id)
		f.entries[e.Id] = proto.Clone(e).(*types.Entry)
		resp.Results = append(resp.Results, &entryv1.BatchCreateEntryResponse_Result{Status: &types.Status{}, Entry: &types.Entry{Id: e.Id}})
	}
	return resp, nil
}

func (f *fakeSPIRE) BatchUpdateEntry(_ context.Context, req *entryv1.BatchUpdateEntryRequest) (*entryv1.BatchUpdateEntryResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &entryv1.BatchUpdateEntryResponse{}
	for _, e := range req.Entries {
		f.calls = append(f.calls, "update "+e.Id)
		f.entries[e.Id] = proto.Clone(e).(*types.Entry)
		resp.Results = append(resp.Results, &entryv1.BatchUpdateEntryResponse_Result{Status: &types.Status{}})
	}
	return resp, nil
}

func (f *fakeSPIRE) BatchDeleteEntry(_ context.Context, req *entryv1.BatchDeleteEntryRequest) (*entryv1.BatchDeleteEntryResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &entryv1.BatchDeleteEntryResponse{}
	for _, id := range req.Ids {
		f.calls = append(f.calls, "delete "+id)
		delete(f.entries, id)
		resp.Results = append(resp.Results, &entryv1.BatchDeleteEntryResponse_Result{Status: &types.Status{}, Id: id})
	}
	return resp, nil
}

func (f *fakeSPIRE) ListAgents(_ context.Context, req *agentv1.ListAgentsRequest) (*agentv1.ListAgentsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	typ := req.Filter.GetByAttestationType()
	if typ != "" {
		f.calls = append(f.calls, "list agents of "+typ)
	}
	resp := &agentv1.ListAgentsResponse{}
	for _, id := range slices.Sorted(maps.Keys(f.agents)) {
		if a := f.agents[id]; typ == "" || a.AttestationType == typ {
			resp.Agents = append(resp.Agents, proto.Clone(a).(*types.Agent))
		}
	}
	return resp, nil
}

func (f *fakeSPIRE) GetAgent(_ context.Context, req *agentv1.GetAgentRequest) (*types.Agent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.agents[idString(req.Id)]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such agent")
	}
	return proto.Clone(a).(*types.Agent), nil
}

func (f *fakeSPIRE) BanAgent(_ context.Context, req *agentv1.BanAgentRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := idString(req.Id)
	f.calls = append(f.calls, "ban "+id)
	a, ok := f.agents[id]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such agent")
	}
	a.Banned = true
	return &emptypb.Empty{}, nil
}

func (f *fakeSPIRE) DeleteAgent(_ context.Context, req *agentv1.DeleteAgentRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := idString(req.Id)
	f.calls = append(f.calls, "evict "+id)
	if f.failEvict[id] {
		return nil, status.Error(codes.Unavailable, "the datastore is down")
	}
	if _, ok := f.agents[id]; !ok {
		return nil, status.Error(codes.NotFound, "no such agent")
	}
	delete(f.agents, id)
	return &emptypb.Empty{}, nil
}
