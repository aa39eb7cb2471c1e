package node

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/internal/attestrpc"
	"github.com/vigil-iot/vigil/internal/peerid"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

// attestRelayDeadline bounds an Attest, its relay to the leader and the
// retries across an election included (the API's write deadline).
const attestRelayDeadline = 10 * time.Second

// attestGRPC serves vigil.attest.v1.Attestation (internal/attestrpc) on the
// ext_authz port, for gateways: with proxy TLS the caller's verified SVID
// must be a gateway of the topology and the device one behind it (the
// caller rule of ext_authz); without proxy TLS anyone could submit for
// anyone, so every call is refused. Challenge runs on any member (nonces
// are MACs under a key every member derives); Attest runs on the leader, so
// a follower relays it to the leader's POST /v1/devices/{name}/attestations
// with the peer token.
type attestGRPC struct {
	n             *Node
	requireCaller bool // proxy TLS is on
	noTLSLogged   sync.Once
}

var _ attestrpc.Handler = (*attestGRPC)(nil)

// registerAttestGRPC serves the attestation service on s, the ext_authz
// gRPC server. Calls use the member's attestor (n.attest, whose batcher Run
// starts); Start sets it after the authorizer, before anything is served.
func (n *Node) registerAttestGRPC(s grpc.ServiceRegistrar) {
	attestrpc.Register(s, &attestGRPC{n: n, requireCaller: n.proxyTLS != nil})
}

// mayAttest says why the proxy whose verified SPIFFE ID is caller may not
// attest device ("" when it may): only a gateway, and only for its own
// devices. A device that does not exist is refused the same way as another
// gateway's, so that the answer tells a gateway nothing about other devices.
func mayAttest(ix *topology.Index, caller, device string) string {
	if caller == "" {
		return "the caller presented no SPIFFE ID in a verified client certificate"
	}
	sub, ok := ix.BySPIFFEID(caller)
	if !ok || sub.Kind != topology.KindGateway {
		return fmt.Sprintf("%s is not a gateway of this topology: only gateways attest devices over the proxy port", caller)
	}
	if d, ok := ix.Device(device); !ok || d.Gateway != sub.Name {
		return fmt.Sprintf("gateway %s may attest only its own devices", sub.Name)
	}
	return ""
}

// admit applies the service's rules to one call; a refusal is logged once,
// here, without the request's evidence or nonce.
func (g *attestGRPC) admit(ctx context.Context, method, device string) error {
	log := g.n.cfg.Logger
	if !g.requireCaller {
		g.noTLSLogged.Do(func() {
			log.Warn("security: attestation over the proxy port refused: the member runs without --proxy-tls-*, "+
				"so callers are not authenticated (logged once)", "method", method, "remote", peerid.Addr(ctx))
		})
		return status.Error(codes.FailedPrecondition, "attestation over the proxy port needs --proxy-tls-*: "+
			"this member does not authenticate its callers")
	}
	if !g.n.Ready() || g.n.attest == nil {
		return status.Errorf(codes.Unavailable, "member %s has not caught up with the cluster yet; retry", g.n.cfg.ID)
	}
	caller := peerid.FromContext(ctx)
	if why := mayAttest(g.n.store.Current().Index(), caller, device); why != "" {
		log.Warn("security: attestation over the proxy port refused", "method", method, "caller", caller,
			"device", device, "remote", peerid.Addr(ctx), "reason", why)
		return status.Error(codes.PermissionDenied, why)
	}
	return nil
}

// Challenge issues a nonce for the caller's device.
func (g *attestGRPC) Challenge(ctx context.Context, device string) (api.ChallengeResponse, error) {
	if err := g.admit(ctx, "Challenge", device); err != nil {
		return api.ChallengeResponse{}, err
	}
	resp, err := g.n.attest.Challenge(device)
	return resp, g.status(err)
}

// Attest verifies and records evidence for the caller's device, here on
// the leader, or relayed to it. While there is no leader, or the leader
// cannot be reached, it retries until attestRelayDeadline.
func (g *attestGRPC) Attest(ctx context.Context, device string, evidence []byte) (api.AttestResponse, error) {
	if err := g.admit(ctx, "Attest", device); err != nil {
		return api.AttestResponse{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, attestRelayDeadline)
	defer cancel()
	retry := time.NewTicker(50 * time.Millisecond)
	defer retry.Stop()
	for {
		resp, err := g.n.attest.Attest(ctx, device, evidence)
		var nl *raft.NotLeaderError
		if !errors.As(err, &nl) {
			return resp, g.status(err)
		}
		if nl.LeaderID != "" && nl.LeaderID != g.n.cfg.ID {
			if m, ok := g.n.store.Member(nl.LeaderID); ok && m.APIAddr != "" {
				resp, rerr := g.n.conn.Client(m.APIAddr, g.n.peer).Attest(ctx, device, evidence)
				var ae *api.Error
				switch {
				case rerr == nil:
					return resp, nil
				case errors.As(rerr, &ae) && ae.Status != http.StatusServiceUnavailable:
					if ae.Code == api.CodeUnauthenticated {
						// The leader refused the peer token: the members disagree on the cluster key.
						g.n.cfg.Logger.Error("attestation relay: the leader refused this member's peer token", "leader", nl.LeaderID)
						return resp, status.Error(codes.Internal, "internal error; see the member's log")
					}
					return resp, g.status(ae)
				case errors.Is(rerr, api.ErrCleartext):
					g.n.cfg.Logger.Error("attestation relay: cannot reach the leader", "leader", nl.LeaderID, "err", rerr)
					return resp, status.Error(codes.Unavailable, "this member cannot relay to the leader; submit to the leader")
				}
				g.n.cfg.Logger.Debug("attestation relay to the leader failed; retrying", "leader", nl.LeaderID, "err", rerr)
				err = rerr
			}
		}
		select {
		case <-ctx.Done():
			return api.AttestResponse{}, status.Errorf(codes.Unavailable, "no leader took the evidence within %v: %v; retry", attestRelayDeadline, err)
		case <-retry.C:
		}
	}
}

// status maps what the attestor returns to a gRPC status.
func (g *attestGRPC) status(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.As(err, new(*api.Error)), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return attestrpc.Status(err)
	case errors.Is(err, raft.ErrNotLeader):
		return status.Error(codes.Unavailable, "no leader; retry")
	case errors.Is(err, raft.ErrRejected):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	g.n.cfg.Logger.Error("attestation over the proxy port failed", "err", err)
	return attestrpc.Status(err)
}
