package spire

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// listPageSize is how many entries or agents one List call asks for.
const listPageSize = 1000

// Client calls a SPIRE server's admin API (entries, agents, bundle) over
// its unix socket, where every caller is local and so an admin.
type Client struct {
	conn    *grpc.ClientConn
	entries entryv1.EntryClient
	agents  agentv1.AgentClient
	bundle  bundlev1.BundleClient
}

// Dial returns a client of the server whose API socket is at path. It does
// not connect until the first call.
func Dial(path string) (*Client, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("spire socket %s: %w", path, err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("spire socket %s: %w", path, err)
	}
	return &Client{conn: conn, entries: entryv1.NewEntryClient(conn), agents: agentv1.NewAgentClient(conn), bundle: bundlev1.NewBundleClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Bundle returns the server's trust domain and its X.509 authorities as
// PEM, what an agent needs to trust the server on first contact.
func (c *Client) Bundle(ctx context.Context) (trustDomain string, caPEM []byte, err error) {
	b, err := c.bundle.GetBundle(ctx, &bundlev1.GetBundleRequest{OutputMask: &types.BundleMask{X509Authorities: true}})
	if err != nil {
		return "", nil, fmt.Errorf("spire: get bundle: %w", err)
	}
	for _, a := range b.X509Authorities {
		caPEM = append(caPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Asn1})...)
	}
	return b.TrustDomain, caPEM, nil
}

var entryMask = &types.EntryMask{SpiffeId: true, ParentId: true, Selectors: true, X509SvidTtl: true, Hint: true, CreatedAt: true}

// ListEntries lists, page by page, the entries whose hint is hint (and, if
// spiffeID is not empty, whose SPIFFE ID is spiffeID).
func (c *Client) ListEntries(ctx context.Context, hint, spiffeID string) ([]Entry, error) {
	filter := &entryv1.ListEntriesRequest_Filter{ByHint: wrapperspb.String(hint)}
	if spiffeID != "" {
		id, err := protoID(spiffeID)
		if err != nil {
			return nil, err
		}
		filter.BySpiffeId = id
	}
	return pages(func(token string) ([]Entry, string, error) {
		resp, err := c.entries.ListEntries(ctx, &entryv1.ListEntriesRequest{Filter: filter, OutputMask: entryMask, PageSize: listPageSize, PageToken: token})
		if err != nil {
			return nil, "", fmt.Errorf("spire: list entries: %w", err)
		}
		out := make([]Entry, len(resp.Entries))
		for i, e := range resp.Entries {
			out[i] = fromProto(e)
		}
		return out, resp.NextPageToken, nil
	})
}

// pages calls list with each next-page token until the last page.
func pages[T any](list func(token string) ([]T, string, error)) ([]T, error) {
	var out []T
	token := ""
	for {
		page, next, err := list(token)
		if err != nil {
			return nil, err
		}
		out = append(out, page...)
		if token = next; token == "" || len(page) == 0 {
			return out, nil
		}
	}
}

// GetEntry returns the entry with that ID; ok is false if there is none.
func (c *Client) GetEntry(ctx context.Context, id string) (e Entry, ok bool, err error) {
	pe, err := c.entries.GetEntry(ctx, &entryv1.GetEntryRequest{Id: id, OutputMask: entryMask})
	if status.Code(err) == codes.NotFound {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, fmt.Errorf("spire: get entry %s: %w", id, err)
	}
	return fromProto(pe), true, nil
}

// EntryError is the failure of one entry of a batch.
type EntryError struct {
	ID   string
	Code codes.Code
	Msg  string
}

func (e *EntryError) Error() string { return fmt.Sprintf("entry %s: %s: %s", e.ID, e.Code, e.Msg) }

// CreateEntries creates entries in one batch and reports each failure. An
// entry that already exists under its own ID is not a failure; one that
// clashes with another entry with the same SPIFFE ID, parent and selectors
// (which Vigil did not create) is, with code AlreadyExists.
func (c *Client) CreateEntries(ctx context.Context, entries []Entry) ([]*EntryError, error) {
	pes, err := toProtos(entries)
	if err != nil {
		return nil, err
	}
	resp, err := c.entries.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: pes, OutputMask: &types.EntryMask{}})
	if err != nil {
		return nil, fmt.Errorf("spire: create entries: %w", err)
	}
	var errs []*EntryError
	for i, r := range resp.Results {
		code := codes.Code(r.Status.GetCode())
		if code == codes.OK || code == codes.AlreadyExists && r.Entry.GetId() == entries[i].ID {
			continue
		}
		errs = append(errs, &EntryError{ID: entries[i].ID, Code: code, Msg: r.Status.GetMessage()})
	}
	return errs, nil
}

// UpdateEntries sets the SPIFFE ID, parent, selectors, TTL and hint of
// existing entries in one batch.
func (c *Client) UpdateEntries(ctx context.Context, entries []Entry) ([]*EntryError, error) {
	pes, err := toProtos(entries)
	if err != nil {
		return nil, err
	}
	resp, err := c.entries.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{
		Entries:    pes,
		InputMask:  &types.EntryMask{SpiffeId: true, ParentId: true, Selectors: true, X509SvidTtl: true, Hint: true},
		OutputMask: &types.EntryMask{},
	})
	if err != nil {
		return nil, fmt.Errorf("spire: update entries: %w", err)
	}
	return batchErrors(entries, resp.Results, func(r *entryv1.BatchUpdateEntryResponse_Result) *types.Status { return r.Status }), nil
}

// DeleteEntries deletes entries by ID in one batch; an entry that is
// already gone is not a failure.
func (c *Client) DeleteEntries(ctx context.Context, ids []string) ([]*EntryError, error) {
	resp, err := c.entries.BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: ids})
	if err != nil {
		return nil, fmt.Errorf("spire: delete entries: %w", err)
	}
	var errs []*EntryError
	for i, r := range resp.Results {
		if code := codes.Code(r.Status.GetCode()); code != codes.OK && code != codes.NotFound {
			errs = append(errs, &EntryError{ID: ids[i], Code: code, Msg: r.Status.GetMessage()})
		}
	}
	return errs, nil
}

func batchErrors[R any](entries []Entry, results []R, st func(R) *types.Status) []*EntryError {
	var errs []*EntryError
	for i, r := range results {
		s := st(r)
		if code := codes.Code(s.GetCode()); code != codes.OK {
			errs = append(errs, &EntryError{ID: entries[i].ID, Code: code, Msg: s.GetMessage()})
		}
	}
	return errs
}

var agentMask = &types.AgentMask{AttestationType: true, X509SvidExpiresAt: true, Banned: true, CanReattest: true, Selectors: true}

// ListAgents lists every attested agent, page by page.
func (c *Client) ListAgents(ctx context.Context) ([]Agent, error) { return c.listAgents(ctx, nil) }

// ListAgentsOfType lists, page by page, the attested agents whose node
// attestor is attestationType (e.g. TPMAttestor).
func (c *Client) ListAgentsOfType(ctx context.Context, attestationType string) ([]Agent, error) {
	return c.listAgents(ctx, &agentv1.ListAgentsRequest_Filter{ByAttestationType: attestationType})
}

func (c *Client) listAgents(ctx context.Context, filter *agentv1.ListAgentsRequest_Filter) ([]Agent, error) {
	return pages(func(token string) ([]Agent, string, error) {
		resp, err := c.agents.ListAgents(ctx, &agentv1.ListAgentsRequest{Filter: filter, OutputMask: agentMask, PageSize: listPageSize, PageToken: token})
		if err != nil {
			return nil, "", fmt.Errorf("spire: list agents: %w", err)
		}
		out := make([]Agent, len(resp.Agents))
		for i, a := range resp.Agents {
			out[i] = agentFromProto(a)
		}
		return out, resp.NextPageToken, nil
	})
}

// GetAgent returns an attested agent; ok is false if the server has none
// by that ID (not attested yet, or evicted).
func (c *Client) GetAgent(ctx context.Context, id string) (a Agent, ok bool, err error) {
	pid, err := protoID(id)
	if err != nil {
		return Agent{}, false, err
	}
	pa, err := c.agents.GetAgent(ctx, &agentv1.GetAgentRequest{Id: pid, OutputMask: agentMask})
	if status.Code(err) == codes.NotFound {
		return Agent{}, false, nil
	}
	if err != nil {
		return Agent{}, false, fmt.Errorf("spire: get agent %s: %w", id, err)
	}
	return agentFromProto(pa), true, nil
}

// BanAgent bans an agent: the server refuses its calls and its
// re-attestation from then on.
func (c *Client) BanAgent(ctx context.Context, id string) error {
	pid, err := protoID(id)
	if err != nil {
		return err
	}
	if _, err := c.agents.BanAgent(ctx, &agentv1.BanAgentRequest{Id: pid}); err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("spire: ban agent %s: %w", id, err)
	}
	return nil
}

// DeleteAgent deletes an agent's record (SPIRE's "evict"); an agent that
// is already gone is not an error.
func (c *Client) DeleteAgent(ctx context.Context, id string) error {
	pid, err := protoID(id)
	if err != nil {
		return err
	}
	if _, err := c.agents.DeleteAgent(ctx, &agentv1.DeleteAgentRequest{Id: pid}); err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("spire: delete agent %s: %w", id, err)
	}
	return nil
}

// CreateJoinToken makes a one-time join token that expires after ttl.
func (c *Client) CreateJoinToken(ctx context.Context, ttl time.Duration) (token string, expires time.Time, err error) {
	jt, err := c.agents.CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{Ttl: seconds(ttl)})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("spire: create join token: %w", err)
	}
	return jt.Value, time.Unix(jt.ExpiresAt, 0), nil
}

func protoID(s string) (*types.SPIFFEID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return nil, fmt.Errorf("spire: %w", err)
	}
	return &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()}, nil
}

func idString(id *types.SPIFFEID) string {
	if id == nil {
		return ""
	}
	return "spiffe://" + id.TrustDomain + id.Path
}

func toProtos(entries []Entry) ([]*types.Entry, error) {
	out := make([]*types.Entry, len(entries))
	for i := range entries {
		var err error
		if out[i], err = toProto(&entries[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func toProto(e *Entry) (*types.Entry, error) {
	spiffeID, err1 := protoID(e.SPIFFEID)
	parentID, err2 := protoID(e.ParentID)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("entry %s: %w", e.ID, err)
	}
	pe := &types.Entry{Id: e.ID, SpiffeId: spiffeID, ParentId: parentID, X509SvidTtl: e.X509TTL, Hint: e.Hint,
		Selectors: make([]*types.Selector, 0, len(e.Selectors))}
	for _, s := range e.Selectors {
		typ, value, _ := strings.Cut(s, ":")
		pe.Selectors = append(pe.Selectors, &types.Selector{Type: typ, Value: value})
	}
	return pe, nil
}

func fromProto(pe *types.Entry) Entry {
	e := Entry{ID: pe.Id, SPIFFEID: idString(pe.SpiffeId), ParentID: idString(pe.ParentId), X509TTL: pe.X509SvidTtl,
		Hint: pe.Hint, CreatedAt: pe.CreatedAt, Selectors: make([]string, 0, len(pe.Selectors))}
	for _, s := range pe.Selectors {
		e.Selectors = append(e.Selectors, s.Type+":"+s.Value)
	}
	e.Selectors = normalize(e.Selectors)
	return e
}

func agentFromProto(pa *types.Agent) Agent {
	a := Agent{ID: idString(pa.Id), AttestationType: pa.AttestationType, Banned: pa.Banned, CanReattest: pa.CanReattest}
	if pa.X509SvidExpiresAt != 0 {
		a.ExpiresAt = time.Unix(pa.X509SvidExpiresAt, 0).UTC()
	}
	if len(pa.Selectors) > 0 {
		a.Selectors = make([]string, 0, len(pa.Selectors))
		for _, s := range pa.Selectors {
			a.Selectors = append(a.Selectors, s.Type+":"+s.Value)
		}
		a.Selectors = normalize(a.Selectors)
	}
	return a
}
