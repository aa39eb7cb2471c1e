package authz

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/vigil-iot/vigil/internal/peerid"
	"github.com/vigil-iot/vigil/topology"
)

// Recorder takes decisions for the decision log; it must not block.
type Recorder interface {
	Record(d *Decision)
}

// Config sets up a Server.
type Config struct {
	// Node is the ID of the member deciding, recorded with every decision.
	Node string
	// Snapshot returns the member's current replica.
	Snapshot func() *topology.Snapshot
	// Ready reports whether the replica has caught up with the cluster;
	// nil means always. Until it has, every request is denied.
	Ready  func() bool
	Engine *Engine
	// Log records every decision; nil records nothing.
	Log Recorder
	// EvalTimeout bounds one policy evaluation (default 100ms).
	EvalTimeout time.Duration
	Now         func() time.Time
	Logger      *slog.Logger
	// RequireCaller answers only proxies whose verified client certificate
	// (the gRPC server must require one) is a gateway's or a cloud edge's
	// SVID, and only about what that proxy could be asked: a gateway about
	// its own devices, an edge about services of its zone. A compromised
	// gateway cannot use the authorizer to probe other zones, or spend
	// other devices' rate limits.
	RequireCaller bool
	// Observer, when set, is called after every decision, allowed or
	// denied, synchronously on the Check's goroutine, with the decision as
	// the monitor reads it. It must not block (a member pushes it into a
	// bounded channel and drops what does not fit) and must copy the
	// Observation if it keeps it: the pointer is reused once it returns.
	Observer func(*Observation)
	// Staleness, when set, says how long this member has been cut off
	// from its cluster's quorum (zero while in contact), by the host's own
	// clock rather than Now. Every
	// decision records it; past MaxStaleness (when not zero) only the
	// subject's essential flows are allowed, whatever the policy says.
	Staleness    func() time.Duration
	MaxStaleness time.Duration
}

// Server is the ext_authz Check service of one member.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	cfg     Config
	limiter *limiter
	cache   *decisionCache
	idBase  string
	seq     atomic.Uint64
}

var _ authv3.AuthorizationServer = (*Server)(nil)

// NewServer returns a Check server.
func NewServer(cfg Config) *Server {
	if cfg.EvalTimeout == 0 {
		cfg.EvalTimeout = 100 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	b := make([]byte, 6)
	rand.Read(b)
	return &Server{cfg: cfg, limiter: newLimiter(), cache: newDecisionCache(), idBase: hex.EncodeToString(b) + "-"}
}

// Register adds the Check service, gRPC health and reflection to g.
func (s *Server) Register(g *grpc.Server) {
	authv3.RegisterAuthorizationServer(g, s)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)
}

// Run keeps the rate limiter's memory bounded until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	s.limiter.run(ctx, 10*time.Minute)
	return nil
}

// Check decides one request. It never returns an error: every failure is
// a deny with its reason, so Envoy fails closed whatever its settings.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := s.cfg.Now()
	d := &Decision{
		ID:   s.idBase + strconv.FormatUint(s.seq.Add(1), 10),
		Time: start.UTC(), Node: s.cfg.Node, HTTPStatus: 403,
	}
	resp := s.decide(ctx, req, d, start)
	d.LatencyUS = s.cfg.Now().Sub(start).Microseconds()
	if s.cfg.Log != nil {
		s.cfg.Log.Record(d)
	}
	return resp, nil
}

func (s *Server) decide(ctx context.Context, req *authv3.CheckRequest, d *Decision, now time.Time) *authv3.CheckResponse {
	var (
		r     Request
		res   resolution // res.snap stays nil until the request is resolved
		cause = CauseOther
		flow  *topology.Rule
	)
	snap := s.cfg.Snapshot()
	if s.cfg.Observer != nil {
		defer func() {
			// Copied out of r and res rather than pointing at them, so
			// that neither leaves decide's frame.
			f := checkFacts{snap: snap, r: r, cause: cause, flow: flow}
			if res.snap != nil && res.deny == "" {
				f.resolved, f.known, f.sub, f.gw, f.svc = true, res.known, res.sub, res.gw, res.svc
			}
			s.observe(req, d, now, &f)
		}()
	}
	deny := func(c Cause, reason string) *authv3.CheckResponse {
		cause, d.Reason = c, reason
		return Deny(Result{Reason: reason, HTTPStatus: d.HTTPStatus}, d.ID)
	}
	if snap != nil {
		d.Revision = snap.Revision()
	}
	var stale time.Duration
	if s.cfg.Staleness != nil {
		stale = s.cfg.Staleness()
		d.StaleMS = stale.Milliseconds()
	}
	d.Source = peerid.Addr(ctx)
	if s.cfg.RequireCaller {
		// Who asks comes first: a caller that may not ask at all gets
		// nothing of its request recorded.
		d.Caller = peerid.FromContext(ctx)
		if snap != nil && snap.HasDocument() {
			if why := callerIsProxy(snap.Index(), d.Caller); why != "" {
				return deny(CauseOther, why)
			}
		}
	}
	var err error
	r, err = ParseRequest(req)
	d.Method, d.Path, d.Subject = r.Method, r.Path, r.Principal
	if err != nil {
		return deny(CauseMalformed, "malformed request: "+err.Error())
	}
	if r.Principal == "" {
		cause, d.HTTPStatus, d.Reason = CauseUnknownIdentity, 401, "no verified client identity (source.principal is empty)"
		return Unauthenticated(d.Reason, d.ID)
	}
	if s.cfg.Ready != nil && !s.cfg.Ready() {
		return deny(CauseOther, "this member is still catching up with the cluster")
	}
	if snap == nil || !snap.HasDocument() {
		return deny(CauseOther, "this member holds no topology yet")
	}
	res = resolve(snap, &r, now)
	d.Subject, d.Gateway, d.Service = res.subjectID, res.gatewayName(), res.serviceName()
	if res.class != nil && res.class.MaxAge > 0 && res.subjState != nil && res.subjState.Attestation != nil {
		d.Attestation = res.subjState.Attestation.EvidenceDigest
	}
	d.Risk = res.risk()
	// An identity that does not check out is reported as such (the most
	// precise reason); only then does it matter whether the asking proxy
	// may ask about this subject at all.
	if res.deny != "" {
		return deny(CauseForwardRefused, res.deny)
	}
	if s.cfg.RequireCaller {
		if why := callerMayAsk(snap.Index(), d.Caller, &res); why != "" {
			c := CauseOther
			if !res.known {
				c = CauseUnknownIdentity // why the asking gateway may not ask about it
			}
			return deny(c, why)
		}
	}
	result, err := s.evaluate(ctx, req, &res, d)
	if err != nil {
		return deny(CauseOther, "policy failed, so the request is denied: "+err.Error())
	}
	// ParseResult has given the result its reason and a deny its status.
	if !result.Allowed {
		cause, d.Reason, d.HTTPStatus = res.denyCause(), result.Reason, result.HTTPStatus
		return Deny(result, d.ID)
	}
	flow = res.allowingFlow()
	if s.cfg.MaxStaleness > 0 && stale > s.cfg.MaxStaleness && (flow == nil || !flow.Essential) {
		// Cut off for too long to trust what this replica allows: only
		// the subject's essential flows still pass (the first essential
		// flow that matches, which need not be the policy's first).
		if flow = firstAllowing(res.flows, r.Method, r.Path, true); flow == nil {
			return deny(CauseStale, fmt.Sprintf("member %s has been cut off from its cluster, or unable to store what it commits, for %s, longer than its --max-staleness %s: only essential flows are allowed",
				s.cfg.Node, stale.Round(time.Second), s.cfg.MaxStaleness))
		}
		// The log names the flow that allows it now, not the policy's.
		result.Reason = fmt.Sprintf("allowed by flow %q", flow.Name)
	}
	// A device's request is counted once, at its gateway, where the
	// principal is the device itself. The cloud edge's Check for the same
	// request names the device in XFCC (r.Forwarded) and spends nothing:
	// counting it again would halve the device's budget, and would let any
	// edge drain the buckets of devices in every zone.
	if r.Forwarded == "" {
		if over := s.limiter.admit(res.device, res.class, flow, now); over != "" {
			d.HTTPStatus = 429
			return deny(CauseRateLimited, over)
		}
	}
	cause = CauseNone
	d.Allowed, d.HTTPStatus, d.Reason = true, 200, result.Reason
	return Allow(result, d.ID)
}

// evaluate runs the policy in force, or takes its earlier result for the
// same context when the policy allows that (see decisionCache).
func (s *Server) evaluate(ctx context.Context, req *authv3.CheckRequest, res *resolution, d *Decision) (Result, error) {
	policy := s.cfg.Engine.Current()
	d.PolicyHash = policy.Hash
	if policy.native != nil {
		// The default policy in Go: cheaper than a cache lookup, so no cache.
		return policy.native(res), nil
	}
	var key cacheKey
	if policy.Cacheable {
		key = res.key(policy)
		if cached, ok := s.cache.get(key); ok {
			return cached, nil
		}
	}
	input, err := BuildInput(req, res.input(s.cfg.Node))
	if err != nil {
		return Result{}, fmt.Errorf("cannot build policy input: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.EvalTimeout)
	defer cancel()
	result, err := policy.Eval(ctx, input)
	if err != nil {
		return Result{}, err
	}
	if policy.Cacheable {
		s.cache.put(key, result)
	}
	return result, nil
}
