package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/internal/peerid"
	"github.com/vigil-iot/vigil/internal/signalrpc"
	"github.com/vigil-iot/vigil/topology"
)

// Refusals of the signal service are logged at most once per caller in
// signalRefusalEvery; signalRefusalCallers bounds the callers remembered.
const (
	signalRefusalEvery   = time.Minute
	signalRefusalCallers = 4096
)

// signalGRPC serves vigil.monitor.v1.Signals (internal/signalrpc) on the
// ext_authz port, for gateways, with the caller rule of attestGRPC: with
// proxy TLS the caller's verified SVID must be a gateway of the topology,
// and the subject a device behind it or the gateway itself; without proxy
// TLS anyone could raise anyone's risk, so every call is refused. A signal
// goes to this member's monitor, which routes it to the subject's owner.
type signalGRPC struct {
	n             *Node
	requireCaller bool // proxy TLS is on
	noTLSLogged   sync.Once

	mu      sync.Mutex
	refused map[string]time.Time // caller → when its last refusal was logged
}

var _ signalrpc.Handler = (*signalGRPC)(nil)

// registerSignalGRPC serves the signal service on s, the ext_authz gRPC
// server. Calls use the member's monitor (n.monitor), which Start sets
// before anything is served; nil when the monitor is off.
func (n *Node) registerSignalGRPC(s grpc.ServiceRegistrar) {
	signalrpc.Register(s, &signalGRPC{n: n, requireCaller: n.proxyTLS != nil, refused: map[string]time.Time{}})
}

// maySignal says why the proxy whose verified SPIFFE ID is caller may not
// report a signal about sub ("" when it may), and otherwise returns the
// caller's gateway name: only a gateway, only about its own devices or
// itself. A device that does not exist is refused the same way as another
// gateway's, so that the answer tells a gateway nothing about other devices.
func maySignal(ix *topology.Index, caller string, sub topology.Subject) (gateway, why string) {
	if caller == "" {
		return "", "the caller presented no SPIFFE ID in a verified client certificate"
	}
	gw, ok := ix.BySPIFFEID(caller)
	if !ok || gw.Kind != topology.KindGateway {
		return "", fmt.Sprintf("%s is not a gateway of this topology: only gateways report signals over the proxy port", caller)
	}
	switch sub.Kind {
	case topology.KindDevice:
		if d, ok := ix.Device(sub.Name); !ok || d.Gateway != gw.Name {
			return "", fmt.Sprintf("gateway %s may report signals only about its own devices and itself", gw.Name)
		}
	case topology.KindGateway:
		if sub.Name != gw.Name {
			return "", fmt.Sprintf("gateway %s may report signals only about its own devices and itself", gw.Name)
		}
	default:
		return "", fmt.Sprintf("signals are about devices and gateways, not %s", sub.Kind)
	}
	return gw.Name, ""
}

// Report admits the call and hands the signal to the monitor, the caller's
// SPIFFE ID as the actor and its gateway as the reporting gateway.
func (g *signalGRPC) Report(ctx context.Context, sub topology.Subject, req api.SignalRequest) (api.SignalResponse, error) {
	log := g.n.cfg.Logger
	if !g.requireCaller {
		g.noTLSLogged.Do(func() {
			log.Warn("security: signal over the proxy port refused: the member runs without --proxy-tls-*, "+
				"so callers are not authenticated (logged once)", "subject", sub, "remote", peerid.Addr(ctx))
		})
		return api.SignalResponse{}, status.Error(codes.FailedPrecondition, "signals over the proxy port need --proxy-tls-*: "+
			"this member does not authenticate its callers")
	}
	if !g.n.Ready() {
		return api.SignalResponse{}, status.Errorf(codes.Unavailable, "member %s has not caught up with the cluster yet; retry", g.n.cfg.ID)
	}
	caller := peerid.FromContext(ctx)
	gateway, why := maySignal(g.n.store.Current().Index(), caller, sub)
	if why != "" {
		if g.logRefusal(caller) {
			log.Warn("security: signal over the proxy port refused", "caller", caller, "subject", sub,
				"signal", req.Signal, "remote", peerid.Addr(ctx), "reason", why)
		}
		return api.SignalResponse{}, status.Error(codes.PermissionDenied, why)
	}
	if g.n.monitor == nil {
		return api.SignalResponse{}, status.Error(codes.FailedPrecondition, "the monitor is off on this member")
	}
	req.Gateway = gateway
	resp, err := g.n.monitor.Signal(ctx, sub, req, caller)
	if err != nil {
		log.Error("signal over the proxy port failed", "caller", caller, "subject", sub, "err", err)
		return resp, signalrpc.Status(err)
	}
	return resp, nil
}

// logRefusal says whether a refusal of caller is to be logged: at most
// once per signalRefusalEvery for each caller, so that a misbehaving
// gateway cannot flood the log.
func (g *signalGRPC) logRefusal(caller string) bool {
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if last, ok := g.refused[caller]; ok && now.Sub(last) < signalRefusalEvery {
		return false
	}
	if len(g.refused) >= signalRefusalCallers {
		for c, last := range g.refused {
			if now.Sub(last) >= signalRefusalEvery {
				delete(g.refused, c)
			}
		}
		if len(g.refused) >= signalRefusalCallers {
			return false // that many distinct callers refused within a minute: enough said
		}
	}
	g.refused[caller] = now
	return true
}
