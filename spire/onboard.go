package spire

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// Errors of Onboard and Agents, for callers to map to their own statuses.
var (
	ErrNoSubject   = errors.New("no such subject in the topology")
	ErrNoAgent     = errors.New("the subject cannot run an agent of its own")
	ErrQuarantined = errors.New("the subject is quarantined; release it first")
	ErrTokenTTL    = fmt.Errorf("a join token's TTL must be from 1m to %v", MaxTokenTTL)
	ErrNotLeader   = errors.New("only the leader issues join tokens")
	// ErrTrustDomain: the document's trust domain is not the SPIRE server's.
	ErrTrustDomain = errors.New("the topology's trust domain is not the SPIRE server's")
	// ErrTPMOnboarded: the subject's class sets attestation.spire, so its
	// agent attests with vigil_tpm and needs no join token. The error
	// Onboard returns says which class and mode, and errors.Is matches it.
	ErrTPMOnboarded = errors.New("the subject onboards with vigil_tpm; join tokens are for subjects without a TPM")
)

// tpmOnboardedError is ErrTPMOnboarded for one subject.
type tpmOnboardedError struct {
	s     topology.Subject
	class *topology.Class
}

func (e *tpmOnboardedError) Error() string {
	return fmt.Sprintf("%s %s onboards with %s (class %s, attestation.spire: %s); join tokens are for %ss without a TPM",
		e.s.Kind, e.s.Name, TPMAttestor, e.class.Name, e.class.Attestation.SPIRE, e.s.Kind)
}

func (e *tpmOnboardedError) Is(target error) bool { return target == ErrTPMOnboarded }

// DefaultTokenTTL is how long a join token lives unless told otherwise.
const DefaultTokenTTL = time.Hour

// Token is a one-time join token bound to a subject: the agent that
// attests with it gets the subject's identity.
type Token struct {
	Subject     topology.Subject `json:"subject"`
	Token       string           `json:"token"`
	ExpiresAt   time.Time        `json:"expiresAt"`
	AgentID     string           `json:"agentId"`
	SPIFFEID    string           `json:"spiffeId"`
	TrustDomain string           `json:"trustDomain"`
	BindingID   string           `json:"bindingId"`
	// Bundle is the server's CA bundle (PEM), for the agent's
	// trust_bundle_path.
	Bundle string `json:"bundle"`
}

// Onboard issues a one-time join token for a gateway or a device of an
// "identity: agent" class and binds the agent that will attest with it to
// the subject (see planBindings for what happens to the binding later).
// Only the leader onboards, so that the binding and the reconciler never
// race on two members. A subject whose class sets attestation.spire is
// refused with ErrTPMOnboarded: its agent attests with vigil_tpm.
func (r *Reconciler) Onboard(ctx context.Context, snap *topology.Snapshot, s topology.Subject, ttl time.Duration) (*Token, error) {
	if !r.cfg.IsLeader() {
		return nil, ErrNotLeader
	}
	ttl = cmp.Or(ttl, DefaultTokenTTL)
	if ttl < time.Minute || ttl > MaxTokenTTL {
		return nil, ErrTokenTTL
	}
	ix := snap.Index()
	if err := bindable(ix, s); err != nil {
		return nil, err
	}
	if c := ix.ClassOf(s); c.SPIRETPM() {
		return nil, &tpmOnboardedError{s: s, class: c}
	}
	if snap.Quarantined(s) {
		return nil, fmt.Errorf("%w: %s", ErrQuarantined, s)
	}
	td, bundle, err := r.cfg.Client.Bundle(ctx)
	if err != nil {
		return nil, err
	}
	if td != ix.TrustDomain() {
		return nil, fmt.Errorf("%w: %q, server %q", ErrTrustDomain, ix.TrustDomain(), td)
	}
	// A token is a credential: a deposed leader that has not noticed must
	// not issue one (nor the binding that gives it an identity).
	if err := r.confirm(ctx); err != nil {
		return nil, err
	}
	token, expires, err := r.cfg.Client.CreateJoinToken(ctx, ttl)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, 4)
	rand.Read(nonce)
	agentID := JoinTokenAgentID(td, token)
	b, err := bindingFor(ix, s, r.cfg.Options.bindingID(s, hex.EncodeToString(nonce)), agentID, &r.cfg.Options)
	if err != nil {
		return nil, err
	}
	if err := r.confirm(ctx); err != nil {
		return nil, fmt.Errorf("bind the join token to %s: %w", s, err)
	}
	errs, err := r.cfg.Client.CreateEntries(ctx, []Entry{b})
	if err == nil && len(errs) > 0 {
		err = errs[0]
	}
	if err != nil {
		// The token is left without a binding: an agent attesting with it
		// gets no identity.
		return nil, fmt.Errorf("bind the join token to %s: %w", s, err)
	}
	// The agent ID holds the token, a secret until it is used: not logged.
	r.log.Info("spire: join token issued", "subject", s.String(), "binding", b.ID, "expires", expires)
	return &Token{Subject: s, Token: token, ExpiresAt: expires.UTC(), AgentID: agentID, SPIFFEID: b.SPIFFEID,
		TrustDomain: td, BindingID: b.ID, Bundle: string(bundle)}, nil
}

// SubjectAgents is a gateway, or a device with its own agent, and the
// agents bound to it.
type SubjectAgents struct {
	Subject     topology.Subject `json:"subject"`
	SPIFFEID    string           `json:"spiffeId"`
	Quarantined bool             `json:"quarantined"`
	Agents      []BoundAgent     `json:"agents"`
}

// BoundAgent is one binding: the agent it names, and whether that agent
// has attested. For a subject onboarded by vigil_tpm it is its TPM binding
// and the agent TPMAgentID; while the subject is quarantined its binding
// is gone, and the (banned) agent is listed without one.
type BoundAgent struct {
	// BindingID is the binding's entry ID; empty for a vigil_tpm agent
	// whose subject has no binding (quarantined, or no longer onboarded
	// by TPM until the next pass evicts it).
	BindingID string `json:"bindingId"`
	// AgentID is the agent's SPIFFE ID; until the agent attests, the join
	// token in it is shortened to its first 8 characters.
	AgentID   string    `json:"agentId"`
	CreatedAt time.Time `json:"createdAt,omitzero"`
	Attested  bool      `json:"attested"`
	// Agent is the server's record; nil until the agent attests.
	Agent *Agent `json:"agent,omitempty"`
}

// Agents lists every subject of kind that can run an agent (every gateway,
// or every device of an "identity: agent" class), sorted by name, with the
// agents bound to it. Any member can answer; it reads the server.
func (r *Reconciler) Agents(ctx context.Context, snap *topology.Snapshot, kind topology.Kind) ([]SubjectAgents, error) {
	o := &r.cfg.Options
	bindings, err := r.cfg.Client.ListEntries(ctx, o.bindingHint(), "")
	if err != nil {
		return nil, err
	}
	agents, err := r.cfg.Client.ListAgents(ctx)
	if err != nil {
		return nil, err
	}
	byID := make(map[string]*Agent, len(agents))
	for i := range agents {
		byID[agents[i].ID] = &agents[i]
	}
	ix := snap.Index()
	td := ix.TrustDomain()
	bound := make(map[topology.Subject][]BoundAgent)
	listed := make(map[string]bool) // agent IDs
	for _, b := range bindings {
		s, ok := o.bindingSubject(b.ID)
		if !ok || s.Kind != kind || o.firmwareAlias(b.ID) || o.banRecord(b.ID) {
			continue // firmware aliases and ban records name no agent
		}
		agentID := b.ParentID
		if o.tpmEntry(b.ID) {
			// Parented to the agent, or to its node alias (required).
			agentID = TPMAgentID(td, s)
		}
		ba := BoundAgent{BindingID: b.ID, AgentID: agentID, Agent: byID[agentID]}
		if ba.Attested = ba.Agent != nil; !ba.Attested {
			ba.AgentID = redactToken(ba.AgentID)
		}
		if b.CreatedAt != 0 {
			ba.CreatedAt = time.Unix(b.CreatedAt, 0).UTC()
		}
		bound[s] = append(bound[s], ba)
		listed[agentID] = true
	}
	// vigil_tpm agents without a binding (quarantined, or no longer
	// onboarded by TPM) are this cluster's only while it uses vigil_tpm.
	tpm := usesTPM(ix)
	for i := range agents {
		a := &agents[i]
		s, ok := tpmAgentSubject(td, a.ID)
		if !tpm || !ok || s.Kind != kind || a.AttestationType != TPMAttestor || listed[a.ID] {
			continue
		}
		bound[s] = append(bound[s], BoundAgent{AgentID: a.ID, Attested: true, Agent: a})
	}
	var out []SubjectAgents
	add := func(s topology.Subject) {
		if bindable(ix, s) != nil {
			return
		}
		id, _ := ix.SPIFFEID(s)
		list := bound[s]
		slices.SortFunc(list, func(a, b BoundAgent) int { return a.CreatedAt.Compare(b.CreatedAt) })
		out = append(out, SubjectAgents{Subject: s, SPIFFEID: id, Quarantined: snap.Quarantined(s), Agents: list})
	}
	switch kind {
	case topology.KindGateway:
		for _, g := range ix.Gateways() {
			add(topology.GatewaySubject(g.Name))
		}
	case topology.KindDevice:
		for _, d := range ix.Devices() {
			add(topology.DeviceSubject(d.Name))
		}
	}
	return out, nil
}

// redactToken shortens the join token at the end of a join-token agent ID:
// until an agent uses it, the token is a credential.
func redactToken(agentID string) string {
	i := strings.LastIndex(agentID, "/join_token/")
	if i < 0 {
		return agentID
	}
	tok := agentID[i+len("/join_token/"):]
	return agentID[:i+len("/join_token/")] + tok[:min(8, len(tok))] + "…"
}
