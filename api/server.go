package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

const (
	// MaxDocumentBytes bounds an uploaded topology document.
	MaxDocumentBytes = 1 << 30
	maxRequestBytes  = 16 << 20
	maxReasonLen     = 1024
	// writeDeadline bounds how long a write waits for a leader, across
	// elections, before it fails; documentDeadline bounds a document
	// replacement, which for a million devices takes tens of seconds.
	writeDeadline    = 10 * time.Second
	documentDeadline = 5 * time.Minute
	maxReadWait      = 10 * time.Second

	headerRevision  = "X-Vigil-Revision"
	headerForwarded = "X-Vigil-Forwarded-By"
)

// Store is what the API needs of the replicated store.
type Store interface {
	ID() string
	Current() *topology.Snapshot
	WaitFor(ctx context.Context, rev topology.Revision) (*topology.Snapshot, error)
	Leader() (id, addr string)
	Member(id string) (raft.Member, bool)
	Status() (raft.Status, error)
	ReplaceDocument(ctx context.Context, ix *topology.Index) (topology.Revision, error)
	UpdateState(ctx context.Context, ops []raft.StateOp) (topology.Revision, error)
	AddVoter(ctx context.Context, m raft.Member) error
	RemoveMember(ctx context.Context, id string) error
	Snapshot() error
	Checkpoint(ctx context.Context, cp raft.SignedCheckpoint) (topology.Revision, error)
	Checkpoints(node string) []raft.RecordedCheckpoint
}

var _ Store = (*raft.Store)(nil)

// ServerConfig sets up a Server.
type ServerConfig struct {
	Store  Store
	Tokens *Tokens
	// SPIRETPMTokens (vigil serve --spire-tpm-token-file) authenticate the
	// vigil_tpm SPIRE node attestor's server plugin on its two routes,
	// POST /v1/spire/tpm/challenge and /attest, and nowhere else; nil: only
	// operators' tokens reach those routes. Every member needs the same
	// ones, for an attestation is forwarded to the leader with its
	// Authorization header.
	SPIRETPMTokens *Tokens
	// PeerToken authenticates this member to the others (status calls).
	PeerToken string
	// Connector reaches the other members (forwarded writes, status); nil
	// uses the system's roots for https members.
	Connector *Connector
	// Ready reports whether the member has caught up with the cluster;
	// /healthz says so. Nil means always.
	Ready func() bool
	// Node describes the member's other parts (the authorizer's policy and
	// decision log) for GET /v1/node; nil leaves it out.
	Node func() any
	// XDS reports the member's xDS server; nil serves no proxy endpoints.
	XDS XDS
	// Attestor verifies evidence; nil serves no attestation endpoints.
	Attestor Attestor
	// Monitor is the member's monitor; nil serves no signal or evidence
	// endpoints.
	Monitor Monitor
	// Metrics serves GET /metrics (Prometheus text format) without a
	// token, as Prometheus scrapes: it names no device, gateway or
	// service. Nil: no metrics.
	Metrics http.Handler
	// DryRun re-decides this member's recent decisions against a
	// candidate topology (vigil topology apply --dry-run); nil serves no
	// dry run.
	DryRun DryRunner
	// Console is the web console at /ui/ and its live decision stream;
	// nil serves no console.
	Console Console
	Logger  *slog.Logger
	Now     func() time.Time
	// Partitioned is nil while the member hears from its cluster's quorum,
	// and otherwise why not (a *raft.PartitionError): a write then fails
	// at once rather than waiting out its deadline for a leader. Nil
	// means never partitioned.
	Partitioned func() error
	// Local takes a quarantine on this member alone (see
	// raft.Store.QuarantineLocal); nil refuses ?local=true.
	Local func(topology.Subject, topology.Quarantine) (raft.LocalQuarantine, error)
}

// Server serves the HTTP API of one member.
type Server struct {
	cfg   ServerConfig
	warns WarnLimiter // unauthenticated requests' warnings (lograte.go)
	mux   *http.ServeMux
	links loginLinks
	fleet fleetIndex
	// done ends long-lived answers (live streams) at Shutdown.
	done     chan struct{}
	shutdown sync.Once
}

// NewServer builds the API handler.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Connector == nil {
		cfg.Connector = defaultConnector
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), done: make(chan struct{})}
	s.mux.HandleFunc("GET /healthz", s.health)
	if cfg.Metrics != nil {
		s.mux.Handle("GET /metrics", cfg.Metrics)
	}
	s.route("GET /v1/topology", s.getTopology)
	s.route("PUT /v1/topology", s.write(s.putTopology))
	s.route("GET /v1/devices/{name}", s.getSubject(topology.KindDevice))
	s.route("GET /v1/gateways/{name}", s.getSubject(topology.KindGateway))
	s.route("GET /v1/services/{name}", s.getSubject(topology.KindService))
	s.route("POST /v1/devices/{name}/quarantine", s.write(s.quarantine(topology.KindDevice)))
	s.route("POST /v1/gateways/{name}/quarantine", s.write(s.quarantine(topology.KindGateway)))
	s.route("POST /v1/devices/{name}/release", s.write(s.release(topology.KindDevice)))
	s.route("POST /v1/gateways/{name}/release", s.write(s.release(topology.KindGateway)))
	s.route("POST /v1/state", s.write(s.updateState))
	s.route("POST /v1/devices/{name}/challenge", s.challenge)
	s.route("POST /v1/devices/{name}/attestations", s.write(s.attest))
	s.route("POST /v1/devices/{name}/enroll", s.write(s.enroll))
	s.route("POST /v1/gateways/{name}/enroll", s.write(s.enrollGateway))
	s.route("POST /v1/internal/attestation-results", s.write(s.recordResults))
	s.route("POST /v1/devices/{name}/enroll/ek", s.write(s.enrollEK))
	s.route("POST /v1/devices/{name}/enroll/ek/activate", s.write(s.activateEK))
	s.route("GET /v1/cluster/status", s.clusterStatus)
	s.route("GET /v1/cluster/self", s.self)
	s.route("GET /v1/node", s.node)
	s.route("GET /v1/proxies", s.proxies)
	s.route("GET /v1/xds/{node}", s.xdsDump)
	s.route("POST /v1/cluster/join", s.write(s.join))
	s.route("POST /v1/cluster/snapshot", s.takeSnapshot)
	s.route("DELETE /v1/cluster/members/{id}", s.write(s.removeMember))
	s.route("POST /v1/audit/checkpoints", s.write(s.submitCheckpoint))
	s.route("GET /v1/audit/checkpoints", s.getCheckpoints)
	s.spireTPMRoutes()
	s.incidentRoutes()
	s.dryRunRoutes()
	s.consoleRoutes()
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "no such endpoint: " + r.Method + " " + r.URL.Path})
	})
	return s
}

// Shutdown ends the live streams, so that an http.Server's Shutdown, which
// waits for open requests, does not wait for them.
func (s *Server) Shutdown() { s.shutdown.Do(func() { close(s.done) }) }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

type actorKey struct{}

func actorOf(r *http.Request) string { a, _ := r.Context().Value(actorKey{}).(string); return a }

// route registers an authenticated handler.
func (s *Server) route(pattern string, h func(http.ResponseWriter, *http.Request) error) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		actor, ok := s.cfg.Tokens.Actor(r)
		if !ok {
			s.unauthenticated(w, r)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), actorKey{}, actor))
		if err := h(w, r); err != nil {
			s.fail(w, r, err)
		}
	})
}

// unauthenticated answers a request without a token the route accepts.
// A SPIRE TPM token (ServerConfig.SPIRETPMTokens) on any route but the
// vigil_tpm node attestor's is answered so too, as an unknown token.
func (s *Server) unauthenticated(w http.ResponseWriter, r *http.Request) {
	if ok, held := s.warns.Allow("unauthenticated", time.Now()); ok {
		s.cfg.Logger.Warn("api: unauthenticated request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "held_back", held)
	}
	writeError(w, &Error{Status: http.StatusUnauthorized, Code: CodeUnauthenticated, Message: "a valid bearer token is required"})
}

// fail turns an error into its HTTP form; it is the only place that does.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var apiErr *Error
	var verr *topology.ValidationError
	switch {
	case errors.As(err, &apiErr):
	case errors.As(err, &verr):
		apiErr = &Error{Status: http.StatusUnprocessableEntity, Code: CodeInvalidDocument,
			Message: fmt.Sprintf("the document has %d problem(s); nothing was changed", len(verr.Errors)), Errors: verr.Errors}
	case errors.Is(err, topology.ErrSyntax):
		apiErr = &Error{Status: http.StatusBadRequest, Code: CodeBadDocument, Message: err.Error() + "; nothing was changed"}
	case errors.Is(err, raft.ErrRejected):
		apiErr = &Error{Status: http.StatusUnprocessableEntity, Code: CodeRejected, Message: err.Error()}
	case errors.As(err, new(*raft.PartitionError)):
		apiErr = &Error{Status: http.StatusServiceUnavailable, Code: CodePartitioned, Message: err.Error()}
	case errors.Is(err, raft.ErrNotLeader):
		apiErr = &Error{Status: http.StatusServiceUnavailable, Code: CodeNoLeader, Message: err.Error() + "; retry"}
	case errors.Is(err, raft.ErrOutcomeUnknown):
		apiErr = &Error{Status: http.StatusGatewayTimeout, Code: CodeTimeout, Message: err.Error() + ": read before retrying"}
	case errors.Is(err, context.DeadlineExceeded):
		apiErr = &Error{Status: http.StatusGatewayTimeout, Code: CodeTimeout, Message: err.Error()}
	default:
		s.cfg.Logger.Error("api: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		apiErr = &Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: err.Error()}
	}
	writeError(w, apiErr)
}

func writeError(w http.ResponseWriter, e *Error) {
	if e.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, e.Status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func badRequest(format string, args ...any) error {
	return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: fmt.Sprintf(format, args...)}
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	ready := s.cfg.Ready == nil || s.cfg.Ready()
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "ready": ready, "revision": s.cfg.Store.Current().Revision()})
}

// snapshot returns the local snapshot, first waiting (bounded) for the
// revision a client asked for with ?min_revision=N, so that a client can
// read its own writes at any member.
func (s *Server) snapshot(w http.ResponseWriter, r *http.Request) (*topology.Snapshot, error) {
	snap := s.cfg.Store.Current()
	if v := r.URL.Query().Get("min_revision"); v != "" {
		rev, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return nil, badRequest("min_revision %q is not a number", v)
		}
		ctx, cancel := context.WithTimeout(r.Context(), maxReadWait)
		defer cancel()
		if snap, err = s.cfg.Store.WaitFor(ctx, topology.Revision(rev)); err != nil {
			return nil, fmt.Errorf("waiting for revision %d (this member is at %d): %w", rev, snap.Revision(), err)
		}
	}
	w.Header().Set(headerRevision, strconv.FormatUint(uint64(snap.Revision()), 10))
	return snap, nil
}

func (s *Server) getTopology(w http.ResponseWriter, r *http.Request) error {
	snap, err := s.snapshot(w, r)
	if err != nil {
		return err
	}
	if !snap.HasDocument() {
		return notFound("no topology has been applied yet")
	}
	resp := TopologyResponse{Revision: snap.Revision(), DocumentRevision: snap.DocumentRevision(), Document: snap.Index().Document()}
	if strings.Contains(r.Header.Get("Accept"), "yaml") {
		w.Header().Set("Content-Type", "application/yaml")
		fmt.Fprintf(w, "# revision %d (document applied at revision %d)\n", resp.Revision, resp.DocumentRevision)
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		defer enc.Close()
		return enc.Encode(resp.Document)
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) putTopology(w http.ResponseWriter, r *http.Request, body []byte) error {
	// Only the leader decodes and validates: a follower forwards the bytes
	// rather than parse a large document twice (and again on every retry).
	if id, addr := s.cfg.Store.Leader(); id != s.cfg.Store.ID() {
		return &raft.NotLeaderError{LeaderID: id, LeaderAddr: addr}
	}
	ix, err := topology.Load(body)
	if err != nil {
		return err
	}
	rev, err := s.cfg.Store.ReplaceDocument(r.Context(), ix)
	if err != nil {
		return err
	}
	s.cfg.Logger.Info("api: topology applied", "revision", rev, "by", actorOf(r),
		"zones", ix.NumZones(), "gateways", ix.NumGateways(), "devices", ix.NumDevices(), "flows", ix.NumFlows())
	writeJSON(w, http.StatusOK, WriteResponse{Revision: rev})
	return nil
}

func (s *Server) getSubject(kind topology.Kind) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		snap, err := s.snapshot(w, r)
		if err != nil {
			return err
		}
		v, err := subjectView(snap, topology.Subject{Kind: kind, Name: r.PathValue("name")})
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, v)
		return nil
	}
}

func subjectView(snap *topology.Snapshot, sub topology.Subject) (*Subject, error) {
	ix := snap.Index()
	id, ok := ix.SPIFFEID(sub)
	if !ok {
		return nil, notFound("no %s named %q at revision %d", sub.Kind, sub.Name, snap.Revision())
	}
	zone, _ := ix.ZoneOf(sub)
	v := &Subject{Revision: snap.Revision(), Kind: sub.Kind, Name: sub.Name, Zone: zone, SPIFFEID: id,
		Quarantined: snap.Quarantined(sub), State: snap.SubjectState(sub)}
	switch sub.Kind {
	case topology.KindDevice:
		d, _ := ix.Device(sub.Name)
		v.Class, v.Gateway, v.Labels = d.Class, d.Gateway, d.Labels
	case topology.KindGateway:
		g, _ := ix.Gateway(sub.Name)
		v.Labels, v.Devices = g.Labels, len(ix.DevicesOf(sub.Name))
	case topology.KindService:
		svc, _ := ix.Service(sub.Name)
		v.Labels = svc.Labels
	}
	return v, nil
}

func (s *Server) quarantine(kind topology.Kind) writeHandler {
	return func(w http.ResponseWriter, r *http.Request, body []byte) error {
		var req QuarantineRequest
		if err := decodeStrict(body, &req); err != nil {
			return err
		}
		req.Reason = strings.TrimSpace(req.Reason)
		if req.Reason == "" || len(req.Reason) > maxReasonLen {
			return badRequest("a reason of 1 to %d characters is required", maxReasonLen)
		}
		op := raft.StateOp{Subject: topology.Subject{Kind: kind, Name: r.PathValue("name")}, Op: raft.OpQuarantine,
			Quarantine: &topology.Quarantine{Reason: req.Reason, By: actorOf(r), Since: s.cfg.Now().UTC()}}
		if v := r.URL.Query().Get("local"); v != "" {
			local, err := strconv.ParseBool(v)
			if err != nil {
				return badRequest("local=%q: want true or false", v)
			}
			if local {
				return s.quarantineLocal(w, r, op)
			}
		}
		return s.applyOne(w, r, op)
	}
}

// quarantineLocal takes op on this member alone (POST .../quarantine?local=true):
// in force here at once, proposed to the cluster when this member can reach
// it. It is answered here, never forwarded.
func (s *Server) quarantineLocal(w http.ResponseWriter, r *http.Request, op raft.StateOp) error {
	if s.cfg.Local == nil {
		return badRequest("this member takes no local quarantines")
	}
	lq, err := s.cfg.Local(op.Subject, *op.Quarantine)
	if errors.Is(err, raft.ErrRejected) && !s.cfg.Store.Current().Index().Exists(op.Subject) {
		return notFound("no %s named %q", op.Subject.Kind, op.Subject.Name)
	}
	if err != nil {
		return err
	}
	s.cfg.Logger.Warn("api: local quarantine: in force on this member, proposed to the cluster when it can be",
		"subject", op.Subject.String(), "by", actorOf(r), "id", lq.ID[:16])
	v, err := subjectView(s.cfg.Store.Current(), op.Subject)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, LocalQuarantineResponse{Subject: *v, LocalID: lq.ID, Pending: true})
	return nil
}

func (s *Server) release(kind topology.Kind) writeHandler {
	return func(w http.ResponseWriter, r *http.Request, _ []byte) error {
		return s.applyOne(w, r, raft.StateOp{Subject: topology.Subject{Kind: kind, Name: r.PathValue("name")}, Op: raft.OpRelease})
	}
}

func (s *Server) applyOne(w http.ResponseWriter, r *http.Request, op raft.StateOp) error {
	rev, err := s.cfg.Store.UpdateState(r.Context(), []raft.StateOp{op})
	if errors.Is(err, raft.ErrRejected) && !s.cfg.Store.Current().Index().Exists(op.Subject) {
		return notFound("no %s named %q", op.Subject.Kind, op.Subject.Name)
	}
	if err != nil {
		return err
	}
	s.cfg.Logger.Info("api: "+string(op.Op), "subject", op.Subject.String(), "by", actorOf(r), "revision", rev)
	snap, err := s.cfg.Store.WaitFor(r.Context(), rev)
	if err != nil {
		return err
	}
	v, err := subjectView(snap, op.Subject)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (s *Server) updateState(w http.ResponseWriter, r *http.Request, body []byte) error {
	var req StateRequest
	if err := decodeStrict(body, &req); err != nil {
		return err
	}
	// Who and when are the caller's token and this member's clock, never
	// what the body claims; attestations are recorded only by Vigil's
	// verification of evidence, not through the API.
	now := s.cfg.Now().UTC()
	for i := range req.Ops {
		op := &req.Ops[i]
		if (op.Nonce != "" || !op.NonceExpires.IsZero()) && (op.Op != raft.OpQuarantine || actorOf(r) != PeerActor) {
			// Nonces are Vigil's own: a member proposing a quarantine it
			// took while cut off. One chosen by a client could make
			// every replica remember it, or refuse others, for as long
			// as it liked.
			return badRequest("ops[%d]: a nonce is set only by Vigil", i)
		}
		switch op.Op {
		case raft.OpSetAttestation, raft.OpClearAttestation:
			return badRequest("ops[%d]: attestations cannot be written through the API; they come from verified evidence", i)
		case raft.OpEnroll:
			return badRequest("ops[%d]: enroll keys with POST /v1/devices/{name}/enroll, which records who enrolled them", i)
		case raft.OpQuarantine:
			if op.Nonce != "" {
				// A member proposing a quarantine it took while cut off
				// (--local): who took it and when are its own record,
				// but not a time ahead of this member's clock.
				if op.Quarantine != nil && op.Quarantine.Since.After(now.Add(time.Minute)) {
					return badRequest("ops[%d]: a local quarantine taken at %s, ahead of this member's clock", i, op.Quarantine.Since.Format(time.RFC3339))
				}
				continue
			}
			if op.Quarantine != nil {
				q := *op.Quarantine
				q.By, q.Since = actorOf(r), now
				op.Quarantine = &q
			}
		case raft.OpSetRisk:
			if op.Risk != nil {
				rk := *op.Risk
				rk.UpdatedAt = now
				op.Risk = &rk
			}
		}
	}
	rev, err := s.cfg.Store.UpdateState(r.Context(), req.Ops)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, WriteResponse{Revision: rev})
	return nil
}

func (s *Server) join(w http.ResponseWriter, r *http.Request, body []byte) error {
	var m JoinRequest
	if err := decodeStrict(body, &m); err != nil {
		return err
	}
	if !raft.ValidMemberID(m.ID) || m.RaftAddr == "" || m.APIAddr == "" {
		return badRequest("a valid id (a-z, 0-9, '-', '_'), raftAddr and apiAddr are required")
	}
	if err := s.cfg.Store.AddVoter(r.Context(), m); err != nil {
		return err
	}
	s.cfg.Logger.Info("api: member joined", "id", m.ID, "raft", m.RaftAddr, "api", m.APIAddr, "by", actorOf(r))
	writeJSON(w, http.StatusOK, map[string]string{"joined": m.ID})
	return nil
}

func (s *Server) removeMember(w http.ResponseWriter, r *http.Request, _ []byte) error {
	id := r.PathValue("id")
	if err := s.cfg.Store.RemoveMember(r.Context(), id); err != nil {
		return err
	}
	s.cfg.Logger.Info("api: member removed", "id", id, "by", actorOf(r))
	writeJSON(w, http.StatusOK, map[string]string{"removed": id})
	return nil
}

// node reports this member's own parts: readiness, and what the node
// composition adds (policy in force, decision-log counters).
func (s *Server) node(w http.ResponseWriter, r *http.Request) error {
	out := map[string]any{"id": s.cfg.Store.ID(), "ready": s.cfg.Ready == nil || s.cfg.Ready(),
		"revision": s.cfg.Store.Current().Revision()}
	if s.cfg.Node != nil {
		out["parts"] = s.cfg.Node()
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// XDS is what the API shows of a member's xDS server.
type XDS interface {
	// ProxyStatus lists the proxies connected to this member, with what was
	// sent, ACKed and NACKed per type.
	ProxyStatus() any
	// Dump renders, as YAML, the configuration a node receives.
	Dump(node, cluster string, proxyless bool) ([]byte, error)
}

func (s *Server) proxies(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.XDS == nil {
		return notFound("this member serves no xDS")
	}
	writeJSON(w, http.StatusOK, map[string]any{"member": s.cfg.Store.ID(), "proxies": s.cfg.XDS.ProxyStatus()})
	return nil
}

func (s *Server) xdsDump(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.XDS == nil {
		return notFound("this member serves no xDS")
	}
	q := r.URL.Query()
	proxyless := false
	switch q.Get("proxyless") {
	case "", "false":
	case "true":
		proxyless = true
	default:
		return badRequest("proxyless must be true or false")
	}
	data, err := s.cfg.XDS.Dump(r.PathValue("node"), q.Get("cluster"), proxyless)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(data)
	return nil
}

// takeSnapshot makes the answering member write a raft snapshot now and
// compact its log; it is not forwarded.
func (s *Server) takeSnapshot(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Store.Snapshot(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	rev := s.cfg.Store.Current().Revision()
	s.cfg.Logger.Info("api: snapshot taken", "revision", rev, "by", actorOf(r))
	writeJSON(w, http.StatusOK, WriteResponse{Revision: rev})
	return nil
}

func (s *Server) self(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.snapshot(w, r); err != nil { // honours ?min_revision
		return err
	}
	st, err := s.cfg.Store.Status()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

// clusterStatus asks every member for the revision it has applied.
func (s *Server) clusterStatus(w http.ResponseWriter, r *http.Request) error {
	st, err := s.cfg.Store.Status()
	if err != nil {
		return err
	}
	out := ClusterStatus{AnsweredBy: st.ID, LeaderID: st.LeaderID, Term: st.Term, Revision: st.Revision,
		Members: make([]MemberStatus, len(st.Members))}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	done := make(chan struct{}, len(st.Members))
	for i, m := range st.Members {
		out.Members[i].MemberStatus = m
		go func(ms *MemberStatus) {
			defer func() { done <- struct{}{} }()
			self := &st
			if ms.ID != st.ID {
				if ms.APIAddr == "" {
					ms.Error = "member has not registered its API address"
					return
				}
				var err error
				if self, err = s.cfg.Connector.Client(ms.APIAddr, s.cfg.PeerToken).Self(ctx); err != nil {
					ms.Error = err.Error()
					return
				}
			}
			ms.Reachable, ms.State, ms.AppliedIndex, ms.Revision = true, self.State, self.AppliedIndex, self.Revision
		}(&out.Members[i])
	}
	for range st.Members {
		<-done
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// decodeStrict decodes a JSON body, rejecting unknown fields.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return badRequest("request body: %v", err)
	}
	return nil
}
