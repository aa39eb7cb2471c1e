package authz

// Replay: which recorded decisions a change would flip
//
// Replay streams a decision log (decisionlog.go) and decides every recorded
// decision again against a candidate topology and policy, the way Check
// would: resolve against a snapshot, then evaluate the policy. It reports
// what flips (allow → deny and deny → allow) grouped by flow, by device and
// by service, with counts and a few example decision IDs each.
//
// The log records the subject, service, method and path of a request, not
// its headers, query or body, nor the runtime state it was decided with;
// Replay rebuilds the request from those four fields and takes the state
// from ReplayConfig.StateOf, or assumes a clean one (no quarantine, no risk,
// and an acceptable attestation for every device whose class requires one).
// Rate limits are not replayed.
//
// Memory is bounded: the log is read line by line, and only per-group
// counts (at most MaxGroups groups per dimension) with at most Examples
// examples each are kept, plus the runtime state of the subjects seen.

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vigil-iot/vigil/topology"
)

// ReplayConfig sets up Replay.
type ReplayConfig struct {
	// Candidate is the topology to decide against; required.
	Candidate *topology.Index
	// Current is the topology the log was decided against, if known; it
	// names the flow that allowed a recorded allow.
	Current *topology.Index
	// Policy decides; nil means Vigil's embedded default policy.
	Policy *Policy
	// StateOf returns the runtime state of a device or gateway (nil for
	// none). It is called at most once per subject. Nil assumes a clean
	// state: no quarantine, no risk, and a passed, fresh attestation at a
	// reference firmware for every device whose class requires one.
	StateOf func(ctx context.Context, sub topology.Subject) (*topology.SubjectState, error)
	// Now is the time decided at (default time.Now()).
	Now time.Time
	// Node is input.vigil.node (default "replay").
	Node string
	// Examples is how many examples each group keeps (default 3).
	Examples int
	// MaxGroups bounds the groups of each dimension (default 10000); the
	// rest are counted under "(other)".
	MaxGroups int
}

// ReplayReport is what Replay found.
type ReplayReport struct {
	// Assumptions say what the replay could not know and took for granted.
	Assumptions []string      `json:"assumptions"`
	PolicyHash  string        `json:"policy_hash"`
	Totals      ReplayTotals  `json:"totals"`
	ByFlow      []ReplayGroup `json:"by_flow"`
	ByDevice    []ReplayGroup `json:"by_device"`
	ByService   []ReplayGroup `json:"by_service"`
}

// ReplayTotals counts the lines of the log by what became of them.
type ReplayTotals struct {
	Lines       int `json:"lines"`
	Decisions   int `json:"decisions"`
	Redecided   int `json:"redecided"`
	Unchanged   int `json:"unchanged"`
	AllowToDeny int `json:"allow_to_deny"`
	DenyToAllow int `json:"deny_to_allow"`
	// Skipped counts lines not re-decided, by reason.
	Skipped map[string]int `json:"skipped,omitempty"`
}

// ReplayGroup is the flips of one flow, device or service.
type ReplayGroup struct {
	Key string `json:"key"`
	// FlowBefore and FlowAfter, in ByFlow, are the allowing flow before
	// (from Current; "" when unknown or denied) and after.
	FlowBefore string          `json:"flow_before,omitempty"`
	FlowAfter  string          `json:"flow_after,omitempty"`
	ToDeny     int             `json:"allow_to_deny"`
	ToAllow    int             `json:"deny_to_allow"`
	Examples   []ReplayExample `json:"examples"`
}

// ReplayExample is one flipped decision.
type ReplayExample struct {
	DecisionID string `json:"decision_id"`
	Subject    string `json:"subject"`
	Service    string `json:"service,omitempty"`
	Method     string `json:"method,omitempty"`
	Path       string `json:"path,omitempty"`
	Before     string `json:"before"` // the recorded reason
	After      string `json:"after"`  // the reason now
}

// ErrNotDecisionLog is returned for input that is not a decision log.
var ErrNotDecisionLog = errors.New("not a decision log")

// Skip reasons.
const (
	SkipAggregate     = "aggregate line (denies folded past the deny budget; not individually recorded)"
	SkipGap           = "gap line (decisions dropped when the log could not be written)"
	SkipChainRestart  = "chain_restart marker"
	SkipOversize      = "oversize line"
	SkipUnreadable    = "unreadable line (torn write or not an entry)"
	SkipOther         = "entry that is not a decision"
	SkipNoSubject     = "no verified subject recorded (unauthenticated or malformed request)"
	SkipRateLimited   = "rate limited when recorded (rate limits are not replayed)"
	SkipBeforePolicy  = "denied before the policy ran (member not ready, forward or caller refused)"
	SkipPolicyMissing = "no policy hash recorded"
)

// replayLine is an entry as far as Replay reads it.
type replayLine struct {
	chainFields
	Aggregate string          `json:"aggregate"`
	Gap       string          `json:"gap"`
	Oversize  json.RawMessage `json:"oversize"`
	Decision
}

type groupAcc struct {
	g     ReplayGroup
	first int // order of first appearance, for stable sorting
}

type dimension struct {
	max    int
	groups map[string]*groupAcc
}

func (d *dimension) add(key, before, after string, toDeny bool, ex ReplayExample, examples int) {
	a, ok := d.groups[key]
	if !ok {
		if len(d.groups) >= d.max {
			key, before, after = "(other)", "", ""
			a = d.groups[key]
		}
		if a == nil {
			a = &groupAcc{g: ReplayGroup{Key: key, FlowBefore: before, FlowAfter: after}, first: len(d.groups)}
			d.groups[key] = a
		}
	}
	if toDeny {
		a.g.ToDeny++
	} else {
		a.g.ToAllow++
	}
	if len(a.g.Examples) < examples {
		a.g.Examples = append(a.g.Examples, ex)
	}
}

func (d *dimension) sorted() []ReplayGroup {
	accs := make([]*groupAcc, 0, len(d.groups))
	for _, a := range d.groups {
		accs = append(accs, a)
	}
	slices.SortFunc(accs, func(x, y *groupAcc) int {
		if c := cmp.Compare(y.g.ToDeny+y.g.ToAllow, x.g.ToDeny+x.g.ToAllow); c != 0 {
			return c
		}
		return cmp.Compare(x.g.Key, y.g.Key)
	})
	out := make([]ReplayGroup, len(accs))
	for i, a := range accs {
		out[i] = a.g
	}
	return out
}

type replayKey struct{ subject, service, method, path string }

type replayOutcome struct {
	allowed bool
	reason  string
	flow    string
}

// maxReplayCache bounds the outcomes remembered; the cache is emptied when
// full.
const maxReplayCache = 1 << 16

type replayer struct {
	cfg      ReplayConfig
	policy   *Policy
	state    *topology.State
	have     map[topology.Subject]bool
	cand     *topology.Snapshot
	cur      *topology.Snapshot
	cache    map[replayKey]replayOutcome
	curFlows map[replayKey]string
}

// Replay re-decides the decisions of the log r against cfg.Candidate (and
// cfg.Policy) and reports what would flip. It fails on input that is not a
// decision log (ErrNotDecisionLog), and on a read error or ctx's end.
func Replay(ctx context.Context, r io.Reader, cfg ReplayConfig) (*ReplayReport, error) {
	if cfg.Candidate == nil {
		return nil, errors.New("replay: a candidate topology is required")
	}
	if cfg.Now.IsZero() {
		cfg.Now = time.Now()
	}
	if cfg.Node == "" {
		cfg.Node = "replay"
	}
	if cfg.Examples <= 0 {
		cfg.Examples = 3
	}
	if cfg.MaxGroups <= 0 {
		cfg.MaxGroups = 10000
	}
	rp := &replayer{cfg: cfg, policy: cfg.Policy, state: topology.NewState(), have: map[topology.Subject]bool{},
		cache: map[replayKey]replayOutcome{}, curFlows: map[replayKey]string{}}
	if rp.policy == nil {
		p, err := Compile(ctx, map[string]string{"vigil.rego": DefaultPolicy}, nil, DefaultQuery, "embedded default")
		if err != nil {
			return nil, fmt.Errorf("default policy: %w", err)
		}
		rp.policy = p
	}
	rep := &ReplayReport{PolicyHash: rp.policy.Hash, Totals: ReplayTotals{Skipped: map[string]int{}}}
	rep.Assumptions = append(rep.Assumptions,
		"requests are rebuilt from the recorded subject, service, method and path (headers, query and body are not recorded)",
		"rate limits are not replayed")
	if cfg.StateOf == nil {
		rep.Assumptions = append(rep.Assumptions,
			"no runtime state: no subject is quarantined or at risk, and every device whose class requires attestation is taken to be attested at a reference firmware")
	} else {
		rep.Assumptions = append(rep.Assumptions, "runtime state (quarantine, risk, attestation) is the member's current state of each subject, at "+cfg.Now.UTC().Format(time.RFC3339))
	}
	if cfg.Current == nil {
		rep.Assumptions = append(rep.Assumptions, "no current topology: the flow that allowed a recorded allow is unknown")
	}
	dims := [3]*dimension{}
	for i := range dims {
		dims[i] = &dimension{max: cfg.MaxGroups, groups: map[string]*groupAcc{}}
	}

	src := &logLineSource{r: bufio.NewReaderSize(r, 64<<10)}
	entries := 0
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ln, err := src.next()
		if err != nil {
			return nil, err
		}
		if ln == nil {
			break
		}
		rep.Totals.Lines++
		if ln.err != nil {
			if entries == 0 {
				return nil, fmt.Errorf("%w: line %d: %v", ErrNotDecisionLog, ln.n, ln.err)
			}
			rep.Totals.Skipped[SkipUnreadable]++
			continue
		}
		entries++
		if ln.size > MaxLogLine {
			rep.Totals.Skipped[SkipOversize]++
			continue
		}
		var e replayLine
		if err := json.Unmarshal(ln.b, &e); err != nil {
			rep.Totals.Skipped[SkipUnreadable]++
			continue
		}
		switch {
		case e.ChainRestart:
			rep.Totals.Skipped[SkipChainRestart]++
			continue
		case e.Aggregate != "":
			rep.Totals.Skipped[SkipAggregate]++
			continue
		case e.Gap != "":
			rep.Totals.Skipped[SkipGap]++
			continue
		case e.Oversize != nil:
			rep.Totals.Skipped[SkipOversize]++
			continue
		case e.ID == "":
			rep.Totals.Skipped[SkipOther]++
			continue
		}
		rep.Totals.Decisions++
		d := &e.Decision
		switch {
		case d.Subject == "":
			rep.Totals.Skipped[SkipNoSubject]++
			continue
		case d.HTTPStatus == 429:
			rep.Totals.Skipped[SkipRateLimited]++
			continue
		case !d.Allowed && d.PolicyHash == "":
			rep.Totals.Skipped[SkipBeforePolicy]++
			continue
		}
		now, err := rp.decide(ctx, d)
		if err != nil {
			return nil, err
		}
		rep.Totals.Redecided++
		if now.allowed == d.Allowed {
			rep.Totals.Unchanged++
			continue
		}
		toDeny := d.Allowed
		var before, after string
		if toDeny {
			rep.Totals.AllowToDeny++
			before, err = rp.flowBefore(ctx, d)
			if err != nil {
				return nil, err
			}
		} else {
			rep.Totals.DenyToAllow++
			after = now.flow
		}
		ex := ReplayExample{DecisionID: d.ID, Subject: d.Subject, Service: d.Service, Method: d.Method, Path: d.Path,
			Before: d.Reason, After: now.reason}
		dims[0].add(flowKey(before, after, toDeny, cfg.Current != nil), before, after, toDeny, ex, cfg.Examples)
		dims[1].add(rp.subjectKey(d.Subject), "", "", toDeny, ex, cfg.Examples)
		svc := d.Service
		if svc == "" {
			svc = "(unknown service)"
		}
		dims[2].add(svc, "", "", toDeny, ex, cfg.Examples)
	}
	if entries == 0 && rep.Totals.Lines > 0 {
		return nil, fmt.Errorf("%w: no entry in %d lines", ErrNotDecisionLog, rep.Totals.Lines)
	}
	rep.ByFlow, rep.ByDevice, rep.ByService = dims[0].sorted(), dims[1].sorted(), dims[2].sorted()
	if len(rep.Totals.Skipped) == 0 {
		rep.Totals.Skipped = nil
	}
	return rep, nil
}

func flowKey(before, after string, toDeny, haveCurrent bool) string {
	if toDeny {
		if before == "" {
			before = "(unknown flow)"
			if haveCurrent {
				before = "(no flow in the current topology)"
			}
		}
		return before + " → (denied)"
	}
	if after == "" {
		after = "(allowed by policy, no flow)"
	}
	return "(denied) → " + after
}

// subjectKey names a subject for the by-device groups: kind/name in the
// candidate or current topology, else its SPIFFE ID.
func (rp *replayer) subjectKey(id string) string {
	if s, ok := rp.cfg.Candidate.BySPIFFEID(id); ok {
		return s.String()
	}
	if rp.cfg.Current != nil {
		if s, ok := rp.cfg.Current.BySPIFFEID(id); ok {
			return s.String()
		}
	}
	return id
}

// ensureState loads the state of id's subject (and its gateway) in ix
// into rp.state, once per subject.
func (rp *replayer) ensureState(ctx context.Context, ix *topology.Index, id string) error {
	sub, ok := ix.BySPIFFEID(id)
	if !ok {
		return nil
	}
	subs := []topology.Subject{sub}
	if sub.Kind == topology.KindDevice {
		if d, ok := ix.Device(sub.Name); ok {
			subs = append(subs, topology.GatewaySubject(d.Gateway))
		}
	}
	updates := map[topology.Subject]*topology.SubjectState{}
	for _, s := range subs {
		if rp.have[s] || (s.Kind != topology.KindDevice && s.Kind != topology.KindGateway) {
			continue
		}
		rp.have[s] = true
		var st *topology.SubjectState
		if rp.cfg.StateOf != nil {
			var err error
			if st, err = rp.cfg.StateOf(ctx, s); err != nil {
				return fmt.Errorf("state of %s: %w", s, err)
			}
		} else {
			st = rp.assumedState(s)
		}
		if !st.IsZero() {
			updates[s] = st
		}
	}
	if len(updates) > 0 {
		rp.state = rp.state.With(updates)
		rp.cand, rp.cur = nil, nil
	}
	return nil
}

// assumedState is a clean state: an acceptable attestation for a device
// whose candidate class requires one, nothing otherwise.
func (rp *replayer) assumedState(s topology.Subject) *topology.SubjectState {
	if s.Kind != topology.KindDevice {
		return nil
	}
	d, ok := rp.cfg.Candidate.Device(s.Name)
	if !ok {
		return nil
	}
	c, ok := rp.cfg.Candidate.Class(d.Class)
	if !ok || c.MaxAge == 0 {
		return nil
	}
	att := &topology.Attestation{Status: topology.AttestationPassed, Method: "assumed-by-replay",
		VerifiedAt: rp.cfg.Now, ExpiresAt: rp.cfg.Now.Add(c.MaxAge)}
	if len(c.Attestation.Firmware) > 0 {
		att.FirmwareVersion, att.FirmwareSHA256 = c.Attestation.Firmware[0].Version, c.Attestation.Firmware[0].SHA256
	}
	return &topology.SubjectState{Attestation: att}
}

func (rp *replayer) snapshot(current bool) *topology.Snapshot {
	if current {
		if rp.cur == nil {
			rp.cur = topology.NewSnapshot(1, 1, rp.cfg.Current, rp.state)
		}
		return rp.cur
	}
	if rp.cand == nil {
		rp.cand = topology.NewSnapshot(1, 1, rp.cfg.Candidate, rp.state)
	}
	return rp.cand
}

func (rp *replayer) request(ix *topology.Index, d *Decision) Request {
	r := Request{Principal: d.Subject, Service: d.Service, Method: d.Method, Path: d.Path}
	if svc, ok := ix.Service(d.Service); ok && len(svc.Hosts) > 0 {
		r.Host = svc.Hosts[0]
	}
	return r
}

// decide decides d's request against the candidate.
func (rp *replayer) decide(ctx context.Context, d *Decision) (replayOutcome, error) {
	k := replayKey{d.Subject, d.Service, d.Method, d.Path}
	if o, ok := rp.cache[k]; ok {
		return o, nil
	}
	if err := rp.ensureState(ctx, rp.cfg.Candidate, d.Subject); err != nil {
		return replayOutcome{}, err
	}
	snap := rp.snapshot(false)
	r := rp.request(rp.cfg.Candidate, d)
	res := resolve(snap, &r, rp.cfg.Now)
	var o replayOutcome
	switch {
	case res.deny != "":
		o.reason = res.deny
	default:
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: r.Principal},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Id: d.ID, Method: r.Method, Path: r.Path, Host: r.Host, Scheme: "https", Protocol: "HTTP/1.1",
				Headers: map[string]string{":authority": r.Host, ":method": r.Method, ":path": r.Path},
			}},
			ContextExtensions: map[string]string{ServiceExtension: r.Service},
		}}
		input, err := BuildInput(req, res.input(rp.cfg.Node))
		if err != nil {
			o.reason = "cannot build policy input: " + err.Error()
			break
		}
		result, err := rp.policy.Eval(ctx, input)
		if err != nil {
			if ctx.Err() != nil {
				return o, ctx.Err()
			}
			o.reason = "policy failed, so the request is denied: " + err.Error()
			break
		}
		o.allowed, o.reason = result.Allowed, result.Reason
		if o.allowed {
			if f := res.allowingFlow(); f != nil {
				o.flow = f.Name
			}
		}
	}
	if !o.allowed && !res.known {
		o.reason = fmt.Sprintf("subject %s is not in the candidate topology (%s)", d.Subject, o.reason)
	}
	if len(rp.cache) >= maxReplayCache {
		clear(rp.cache)
	}
	rp.cache[k] = o
	return o, nil
}

// flowBefore is the flow of the current topology that allowed d, or "".
func (rp *replayer) flowBefore(ctx context.Context, d *Decision) (string, error) {
	if rp.cfg.Current == nil {
		return "", nil
	}
	k := replayKey{d.Subject, d.Service, d.Method, d.Path}
	if f, ok := rp.curFlows[k]; ok {
		return f, nil
	}
	if err := rp.ensureState(ctx, rp.cfg.Current, d.Subject); err != nil {
		return "", err
	}
	r := rp.request(rp.cfg.Current, d)
	res := resolve(rp.snapshot(true), &r, rp.cfg.Now)
	name := ""
	if f := res.allowingFlow(); f != nil {
		name = f.Name
	}
	if len(rp.curFlows) >= maxReplayCache {
		clear(rp.curFlows)
	}
	rp.curFlows[k] = name
	return name, nil
}
