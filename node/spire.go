package node

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/topology"
)

// SPIREConfig configures the member's SPIRE integration.
type SPIREConfig struct {
	// Socket is the SPIRE server's API socket. Empty: the integration is
	// off and Vigil runs without issuing identities.
	Socket string
	// Options shape the entries (owner marker, SVID TTLs, the selectors of
	// gateways' own processes).
	Options spire.Options
	// Resync is how often the leader compares the whole server with the
	// topology without a change (default 5m).
	Resync time.Duration
	// Parallel is how many entry batches are in flight at once (default 1;
	// more helps a server on PostgreSQL, not one on sqlite3).
	Parallel int
	// TPMTokenFile holds the tokens ("name:token" lines, as the operators'
	// token file) of the vigil_tpm node attestor's server plugin: they
	// authenticate POST /v1/spire/tpm/challenge and /attest only. Every
	// member needs the same file. Empty: only operators' tokens reach
	// those routes. It does not need Socket.
	TPMTokenFile string
}

// spirePart keeps the SPIRE server's entries equal to the topology while
// this member leads, and serves onboarding.
type spirePart struct {
	client *spire.Client
	rec    *spire.Reconciler
	store  *raft.Store
}

// startSPIRE returns nil when the integration is off.
func (n *Node) startSPIRE() (*spirePart, error) {
	cfg := n.cfg.SPIRE
	if cfg.Socket == "" {
		n.cfg.Logger.Info("SPIRE integration is off: no identities are issued or revoked (set --spire-socket to the SPIRE server's API socket)")
		return nil, nil
	}
	cl, err := spire.Dial(cfg.Socket)
	if err != nil {
		return nil, err
	}
	rec, err := spire.NewReconciler(spire.Config{Client: cl, Options: cfg.Options, Resync: cfg.Resync, Parallel: cfg.Parallel, Logger: n.cfg.Logger,
		Now: n.cfg.Clock,
		// Only the leader changes SPIRE, and only once it has applied what
		// the cluster committed: a stale snapshot would undo a quarantine.
		IsLeader: func() bool { return n.store.IsLeader() && n.Ready() },
		// And only while a quorum confirms it leads: a leader that was
		// stalled (SIGSTOP, a VM pause) still believes it leads when it
		// resumes, while another member may lead and have changed SPIRE.
		VerifyLeader: n.store.VerifiedLeader})
	if err != nil {
		cl.Close()
		return nil, err
	}
	n.cfg.Logger.Info("SPIRE integration is on", "socket", cfg.Socket, "owner", cfg.Options.Owner)
	return &spirePart{client: cl, rec: rec, store: n.store}, nil
}

func (p *spirePart) parts() []func(context.Context) error {
	if p == nil {
		return nil
	}
	return []func(context.Context) error{p.rec.Run, p.follow}
}

// follow hands every committed change to the reconciler.
func (p *spirePart) follow(ctx context.Context) error {
	defer p.client.Close()
	sub, snap := p.store.Subscribe()
	defer sub.Close()
	p.rec.Update(snap, spire.Change{Document: true})
	for {
		ev, err := sub.Next(ctx)
		if errors.Is(err, context.Canceled) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("spire: following the store: %w", err)
		}
		p.rec.Update(ev.Snapshot, spire.Change{Document: ev.Document, Restored: ev.Restored, Subjects: ev.Subjects})
	}
}

// api is what the HTTP API serves of the integration; nil when it is off.
func (p *spirePart) api() api.SPIRE {
	if p == nil {
		return nil
	}
	return p
}

// Token issues a join token bound to a gateway or an agent-class device.
func (p *spirePart) Token(ctx context.Context, snap *topology.Snapshot, s topology.Subject, ttl time.Duration) (any, error) {
	tok, err := p.rec.Onboard(ctx, snap, s, ttl)
	if errors.Is(err, spire.ErrNotLeader) || errors.Is(err, spire.ErrNotConfirmed) {
		// Leading but not caught up yet, or not confirmed (deposed): the
		// API's write path retries, at the leader.
		id, addr := p.store.Leader()
		return nil, &raft.NotLeaderError{LeaderID: id, LeaderAddr: addr}
	}
	return tok, apiError(err)
}

// Agents lists the agents bound to every subject of kind.
func (p *spirePart) Agents(ctx context.Context, snap *topology.Snapshot, kind topology.Kind) (any, error) {
	list, err := p.rec.Agents(ctx, snap, kind)
	return list, apiError(err)
}

// Status reports the reconciler.
func (p *spirePart) Status() any { return p.rec.Status() }

// apiError gives the integration's domain errors their HTTP form.
func apiError(err error) error {
	status, code := 0, ""
	switch {
	case err == nil:
		return nil
	case errors.Is(err, spire.ErrNoSubject):
		status, code = http.StatusNotFound, api.CodeNotFound
	case errors.Is(err, spire.ErrNoAgent), errors.Is(err, spire.ErrQuarantined), errors.Is(err, spire.ErrTrustDomain),
		errors.Is(err, spire.ErrTPMOnboarded):
		status, code = http.StatusConflict, api.CodeRejected
	case errors.Is(err, spire.ErrTokenTTL):
		status, code = http.StatusBadRequest, api.CodeBadRequest
	default:
		return err
	}
	return &api.Error{Status: status, Code: code, Message: err.Error()}
}
