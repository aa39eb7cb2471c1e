package spire

import (
	"fmt"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// A binding maps one attested agent to the subject it runs for: an entry
// parented to the agent's own ID (spiffe://<td>/spire/agent/join_token/<token>)
// whose SPIFFE ID is the subject's. It makes the subject's ID a node alias
// of that agent (every entry parented to the subject's ID is then the
// agent's to serve) and, through its selectors, gives the subject's own
// processes their SVID. Onboard creates bindings; the reconciler keeps,
// bans, evicts and deletes them, but never creates one: only a join token
// names an agent. Subjects onboarded by vigil_tpm are the exception: their
// agent's ID is known in advance (TPMAgentID), and the reconciler keeps
// their bindings from the document (DesiredTPM, tpmreconcile.go).

// Agent is what the server knows of an attested agent.
type Agent struct {
	ID              string    `json:"id"`
	AttestationType string    `json:"attestationType,omitempty"`
	ExpiresAt       time.Time `json:"expiresAt,omitzero"`
	Banned          bool      `json:"banned"`
	CanReattest     bool      `json:"canReattest,omitempty"`
	// Selectors are the agent's node selectors, "type:value", sorted (for
	// vigil_tpm, TPMSelectorValues with the type "vigil_tpm").
	Selectors []string `json:"selectors,omitempty"`
}

// bindingSubject reads the subject back from a binding's entry ID,
// "<Owner>.agent.<kind>.<name>.<suffix>"; ok is false for any other ID.
// The suffix is 8 random hex digits for a join-token binding, "tpm",
// "fw-<16 hex>" or "banned" for a TPM-onboarded subject's entries
// (tpmEntry tells them apart).
func (o *Options) bindingSubject(id string) (topology.Subject, bool) {
	rest, ok := strings.CutPrefix(id, o.bindingHint()+".")
	if !ok {
		return topology.Subject{}, false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 || !topology.IsName(parts[1]) || parts[2] == "" {
		return topology.Subject{}, false
	}
	switch parts[0] {
	case "gateway":
		return topology.GatewaySubject(parts[1]), true
	case "device":
		return topology.DeviceSubject(parts[1]), true
	}
	return topology.Subject{}, false
}

// bindingID names a new binding of s; nonce makes it unique per token.
func (o *Options) bindingID(s topology.Subject, nonce string) string {
	return o.bindingHint() + "." + s.Kind.String() + "." + s.Name + "." + nonce
}

// bindable reports whether s may have an agent of its own: a gateway, or a
// device of an "identity: agent" class.
func bindable(ix *topology.Index, s topology.Subject) error {
	switch s.Kind {
	case topology.KindGateway:
		if _, ok := ix.Gateway(s.Name); ok {
			return nil
		}
	case topology.KindDevice:
		d, ok := ix.Device(s.Name)
		if !ok {
			break
		}
		if c, _ := ix.Class(d.Class); !c.OwnAgent() {
			return fmt.Errorf("%w: device %s is of class %s, whose devices get their identity through their gateway (identity: %s)",
				ErrNoAgent, s.Name, d.Class, topology.IdentityDelegated)
		}
		return nil
	default:
		return fmt.Errorf("%w: a %s has no agent of its own", ErrNoAgent, s.Kind)
	}
	return fmt.Errorf("%w: %s", ErrNoSubject, s)
}

// bindingFor is the binding entry s wants for the agent agentID.
func bindingFor(ix *topology.Index, s topology.Subject, id, agentID string, o *Options) (Entry, error) {
	spiffeID, _ := ix.SPIFFEID(s)
	e := Entry{ID: id, SPIFFEID: spiffeID, ParentID: agentID, Hint: o.bindingHint()}
	def, labels := o.GatewaySelectors, topology.Labels(nil)
	e.X509TTL = seconds(o.GatewayTTL)
	if s.Kind == topology.KindDevice {
		d, _ := ix.Device(s.Name)
		def, labels, e.X509TTL = o.DeviceAgentSelectors, d.Labels, seconds(o.DeviceTTL)
	} else if g, ok := ix.Gateway(s.Name); ok {
		labels = g.Labels
	}
	if len(def) == 0 {
		// SPIRE's own convention for join-token aliases: a selector no
		// workload attestor produces, so the entry aliases the agent and
		// hands no SVID to any process.
		def = []string{"spiffe_id:" + agentID}
	}
	sels, err := labelSelectors(labels, def)
	if err != nil {
		return Entry{}, fmt.Errorf("%s: label %s: %w", s, SelectorsLabel, err)
	}
	e.Selectors = sels
	return e, nil
}

// agentActions are what keeps the bindings and their agents right.
type agentActions struct {
	Update []Entry
	Delete []string // binding entry IDs
	Ban    []string // agent IDs
	Evict  []string // agent IDs whose records are deleted
	Errors []error
}

func (a *agentActions) Len() int { return len(a.Update) + len(a.Delete) + len(a.Ban) + len(a.Evict) }

// planBindings decides, for the bindings Vigil owns and the agents they
// name (missing from agents: not attested yet), what to change:
//   - a binding whose subject left the topology (or whose device class no
//     longer runs agents) is deleted and its agent evicted;
//   - so is one whose subject now onboards by vigil_tpm (its class set
//     attestation.spire): switching a class to TPM revokes the agents that
//     joined with tokens;
//   - a quarantined subject's attested agents are banned (the binding stays,
//     as the record of which agent was the subject's), and its pending
//     bindings (token not used yet) are deleted;
//   - once the subject is released, its banned agents are evicted and their
//     bindings deleted: SPIRE cannot lift a ban, and a join token works
//     once, so the subject is onboarded again with a new token;
//   - a binding whose token was never used is deleted after MaxTokenTTL;
//   - otherwise the binding is updated to the subject's current SPIFFE ID,
//     selectors and TTL.
//
// TPM-onboarded subjects' entries (tpmEntry) are not join-token bindings:
// they are skipped here, and kept by Diff(DesiredTPM, …).
func planBindings(snap *topology.Snapshot, o *Options, bindings []Entry, agents map[string]*Agent, now time.Time) agentActions {
	ix := snap.Index()
	var a agentActions
	for i := range bindings {
		b := &bindings[i]
		if o.tpmEntry(b.ID) {
			continue
		}
		s, _ := o.bindingSubject(b.ID)
		agent := agents[b.ParentID]
		switch {
		case bindable(ix, s) != nil, ix.ClassOf(s).SPIRETPM():
			a.Delete = append(a.Delete, b.ID)
			if agent != nil {
				a.Evict = append(a.Evict, agent.ID)
			}
		case snap.Quarantined(s):
			switch {
			case agent == nil:
				a.Delete = append(a.Delete, b.ID)
			case !agent.Banned:
				a.Ban = append(a.Ban, agent.ID)
			}
		case agent != nil && agent.Banned:
			a.Evict = append(a.Evict, agent.ID)
			a.Delete = append(a.Delete, b.ID)
		case agent == nil && b.CreatedAt != 0 && now.Sub(time.Unix(b.CreatedAt, 0)) > MaxTokenTTL:
			a.Delete = append(a.Delete, b.ID)
		default:
			want, err := bindingFor(ix, s, b.ID, b.ParentID, o)
			if err != nil {
				a.Errors = append(a.Errors, err)
			} else if !want.Same(b) {
				a.Update = append(a.Update, want)
			}
		}
	}
	return a
}
