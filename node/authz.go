package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"time"

	"google.golang.org/grpc"

	"github.com/vigil-iot/vigil/authz"
)

// AuthzConfig configures the member's ext_authz server.
type AuthzConfig struct {
	// Addr is the gRPC listen address of envoy.service.auth.v3.Authorization.
	Addr string
	// PolicyDir holds Rego modules and data that replace Vigil's default
	// policy; it is watched and reloaded on change. Empty: the default.
	PolicyDir string
	// PolicyQuery selects the decision (default data.vigil.authz.decision).
	PolicyQuery string
	// DecisionLog is the hash-chained decision log file (default
	// <data-dir>/decisions.log); Strict makes Check wait rather than drop
	// decisions when the log falls behind.
	DecisionLog       string
	DecisionLogStrict bool
	// EvalTimeout bounds one policy evaluation.
	EvalTimeout time.Duration
	// PolicyEngine decides with Vigil's default policy: "go" (its Go form,
	// the default; decision 0009) or "rego" (OPA evaluating the Rego, with
	// the decision cache). A --policy-dir policy always runs as Rego.
	PolicyEngine string
}

type authzPart struct {
	cfg    AuthzConfig
	engine *authz.Engine
	log    *authz.DecisionLog
	server *authz.Server
	ln     net.Listener
	grpc   *grpc.Server
}

// startAuthz loads the policy (a policy dir that does not load stops the
// start, with OPA's error), opens the decision log and binds the listener.
func (n *Node) startAuthz(ctx context.Context) (*authzPart, error) {
	cfg := n.cfg.Authz
	n.warnClock()
	if cfg.DecisionLog == "" {
		cfg.DecisionLog = filepath.Join(n.cfg.DataDir, "decisions.log")
	}
	engine, err := authz.NewEngine(ctx, n.cfg.Logger)
	if err != nil {
		return nil, err
	}
	if cfg.PolicyDir != "" {
		p, err := authz.LoadDir(ctx, cfg.PolicyDir, cfg.PolicyQuery)
		if err != nil {
			return nil, fmt.Errorf("policy dir %s: %w", cfg.PolicyDir, err)
		}
		engine.Use(p)
	} else if cfg.PolicyQuery != "" && cfg.PolicyQuery != authz.DefaultQuery {
		return nil, errors.New("--policy-query needs --policy-dir: the default policy answers only its own query")
	}
	switch cfg.PolicyEngine {
	case "", "go":
	case "rego":
		if cfg.PolicyDir == "" {
			engine.Use(engine.Current().WithRego())
		}
	default:
		return nil, fmt.Errorf("--policy-engine %q: want go or rego", cfg.PolicyEngine)
	}
	dlog, err := authz.OpenDecisionLog(authz.DecisionLogConfig{Path: cfg.DecisionLog, Strict: cfg.DecisionLogStrict, Logger: n.cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("decision log: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("authz listen on %s: %w", cfg.Addr, err)
	}
	p := &authzPart{cfg: cfg, engine: engine, log: dlog, ln: ln, grpc: n.proxyServer(authz.MaxCheckRequestBytes,
		// Checks run on a pool of long-lived goroutines: a new goroutine
		// per Check grew its stack for the decision path on every call
		// (runtime.copystack was 6% of the member's CPU under load).
		grpc.NumStreamWorkers(uint32(4*runtime.GOMAXPROCS(0))))}
	p.server = authz.NewServer(authz.Config{
		Node: n.cfg.ID, Snapshot: n.store.Current, Ready: n.Ready, Engine: engine, Log: dlog,
		EvalTimeout: cfg.EvalTimeout, Logger: n.cfg.Logger, RequireCaller: n.proxyTLS != nil,
		Observer: n.observer(), Now: n.cfg.Clock,
		Staleness: n.quorum.staleness, MaxStaleness: n.cfg.MaxStaleness,
	})
	p.server.Register(p.grpc)
	n.registerAttestGRPC(p.grpc) // gateways' evidence, same port and caller rule (attestgrpc.go)
	n.registerSignalGRPC(p.grpc) // gateways' signals, same port and caller rule (signalgrpc.go)
	return p, nil
}

// Addr is where the Check service listens.
func (p *authzPart) Addr() string { return p.ln.Addr().String() }

// parts are the long-running pieces of the authorizer.
func (p *authzPart) parts() []func(context.Context) error {
	parts := []func(context.Context) error{
		func(ctx context.Context) error {
			go func() { <-ctx.Done(); p.grpc.GracefulStop() }()
			if err := p.grpc.Serve(p.ln); err != nil && ctx.Err() == nil {
				return fmt.Errorf("authz server: %w", err)
			}
			return nil
		},
		p.server.Run,
		p.log.Run,
	}
	if p.cfg.PolicyDir != "" {
		parts = append(parts, func(ctx context.Context) error {
			return p.engine.WatchDir(ctx, p.cfg.PolicyDir, p.cfg.PolicyQuery, time.Second)
		})
	}
	return parts
}

// status describes the authorizer for GET /v1/node.
func (p *authzPart) status() any {
	pol := p.engine.Current()
	return map[string]any{
		"authz": map[string]any{
			"addr":   p.Addr(),
			"policy": map[string]any{"source": pol.Source, "query": pol.Query, "hash": pol.Hash, "engine": policyEngine(pol)},
			"decisionLog": struct {
				Path   string `json:"path"`
				Strict bool   `json:"strict"`
				authz.LogStatus
			}{p.cfg.DecisionLog, p.cfg.DecisionLogStrict, p.log.Status()},
		},
	}
}

// policyEngine says what decides: Vigil's default policy in Go, or OPA.
func policyEngine(p *authz.Policy) string {
	if p.Native() {
		return "go"
	}
	return "rego"
}
