package node

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/monitor"
	"github.com/vigil-iot/vigil/monitor/siem"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

// MonitorConfig configures the member's monitor (monitor/): what it
// ingests, where its alerts go and how its playbook notifies owners.
type MonitorConfig struct {
	// Off runs no monitor: nothing is ingested, no risk is published.
	Off bool
	// Engine tunes the detectors (window, warm-up, half-life,
	// suppression); zero values take monitor's defaults.
	Engine monitor.Config
	// OwnerWebhook receives the playbook's notification for subjects whose
	// `owner` label is a name rather than an http(s) URL.
	OwnerWebhook string
	// EvidenceWindow is how far back the evidence bundle reaches (default
	// 24h).
	EvidenceWindow time.Duration
	// CheckpointInterval is how often baselines are saved (default 30s,
	// and at shutdown).
	CheckpointInterval time.Duration
	// SIEM names where findings and incidents are exported (syslog with
	// CEF, OCSF webhook, Alertmanager); none by default.
	SIEM siem.Config
}

// Queue sizes: events wait here between a member's inputs and its
// detectors or forwarders; when full they are dropped and counted, never
// blocking a Check.
const (
	monitorQueue   = 1 << 16
	forwardQueue   = 1 << 15
	forwardBatch   = 2048
	forwardWindow  = 5 * time.Millisecond
	maxIngestBatch = 1 << 15
	monitorBy      = "vigil/monitor"
)

// monitorPart is the member's monitor: it routes every event to the
// subject's owner (itself or a peer), runs the engine for the subjects it
// owns, publishes their risk and runs the playbook.
type monitorPart struct {
	n      *Node
	cfg    MonitorConfig
	eng    *monitor.Engine
	in     chan monitor.Event
	kick   chan struct{}
	ring   atomic.Pointer[monitor.Ring]
	access *accessLog
	alerts alerter
	log    *slog.Logger

	mu      sync.Mutex
	peers   map[string]*forwarder
	playing map[topology.Subject]bool

	dropped, forwarded, forwardLost, misrouted, ingested atomic.Uint64
	quarantines, incidents                               atomic.Uint64
	plays                                                sync.WaitGroup
	// Failures shown in GET /v1/node, besides the log.
	publishFailed, incidentFailed, checkpointFailed atomic.Uint64
	lastError                                       atomic.Value // string
}

func (m *monitorPart) failed(counter *atomic.Uint64, what string, err error) {
	counter.Add(1)
	m.lastError.Store(m.n.cfg.Clock().UTC().Format(time.RFC3339) + " " + what + ": " + err.Error())
}

// followReleases forgets what the monitor holds about a subject an
// operator released: the release cleared its replicated risk, and the
// owner must not publish it again from its findings (nor quarantine the
// subject again for them).
func (m *monitorPart) followReleases(ctx context.Context) error {
	sub, prev := m.n.store.Subscribe()
	defer sub.Close()
	for {
		ev, err := sub.Next(ctx)
		if err != nil {
			return nil // ctx ended (a lagging subscriber resyncs inside Next)
		}
		for _, s := range ev.Subjects {
			if prev.Quarantined(s) && !ev.Snapshot.Quarantined(s) {
				m.eng.Forget(s)
			}
		}
		prev = ev.Snapshot
	}
}

// alerter takes findings and incidents for the SIEM (siem.go).
type alerter interface {
	finding(f topology.Finding, sub subjectInfo)
	incident(inc topology.Incident, sub subjectInfo) string
	status() any
	run(ctx context.Context) error
}

func (n *Node) startMonitor() (*monitorPart, error) {
	cfg := n.cfg.Monitor
	cfg.EvidenceWindow = cmp.Or(cfg.EvidenceWindow, 24*time.Hour)
	cfg.CheckpointInterval = cmp.Or(cfg.CheckpointInterval, 30*time.Second)
	ecfg := cfg.Engine
	ecfg.Member = n.cfg.ID
	store := n.store
	ecfg.Learning = func(class string) time.Duration {
		if c, ok := store.Current().Index().Class(class); ok {
			return c.Response.Learning
		}
		return 0
	}
	m := &monitorPart{n: n, cfg: cfg, eng: monitor.New(ecfg), in: make(chan monitor.Event, monitorQueue),
		kick: make(chan struct{}, 1), log: n.cfg.Logger, peers: map[string]*forwarder{}, playing: map[topology.Subject]bool{}}
	if err := m.eng.LoadFile(m.checkpointPath()); err != nil {
		// Baselines are worth keeping but not worth refusing to start:
		// the class baselines come back within minutes.
		m.log.Error("monitor: baselines checkpoint not loaded; starting with empty baselines", "err", err)
	}
	var err error
	if m.access, err = openAccessLog(filepath.Join(n.cfg.DataDir, "access.log"), m.log); err != nil {
		return nil, err
	}
	if m.alerts, err = newAlerter(n); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(m.evidenceDir(), 0o700); err != nil {
		return nil, fmt.Errorf("evidence dir: %w", err)
	}
	return m, nil
}

func (m *monitorPart) checkpointPath() string { return filepath.Join(m.n.cfg.DataDir, "monitor.ckpt") }
func (m *monitorPart) evidenceDir() string    { return filepath.Join(m.n.cfg.DataDir, "evidence") }

func (m *monitorPart) parts() []func(context.Context) error {
	parts := []func(context.Context) error{m.route, m.watchRing, m.respondLoop, m.checkpoints, m.access.run, m.followReleases,
		func(ctx context.Context) error {
			<-ctx.Done()
			m.plays.Wait() // playbooks end with ctx; the store must outlive them
			return nil
		}}
	if m.alerts != nil {
		parts = append(parts, m.alerts.run)
	}
	return parts
}

// observe queues an event for the monitor; it never blocks.
func (m *monitorPart) observe(ev monitor.Event) bool {
	if m == nil {
		return false
	}
	select {
	case m.in <- ev:
		return true
	default:
		m.dropped.Add(1)
		return false
	}
}

// route sends each event to its subject's owner.
func (m *monitorPart) route(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-m.in:
			if !m.resolve(&ev) {
				continue
			}
			m.clampTime(&ev)
			ev.Clip()
			owner := m.owner(ev.Subj())
			if owner == "" || owner == m.n.cfg.ID {
				m.judge(&ev)
				continue
			}
			m.forwarder(ctx, owner).send(ev, m)
		}
	}
}

// resolve fills in what the member that saw the event knows from the
// topology: the device's class and zone.
func (m *monitorPart) resolve(ev *monitor.Event) bool {
	ix := m.n.store.Current().Index()
	if !m.attribute(ix, ev) {
		return false
	}
	switch ev.SubKind {
	case topology.KindDevice:
		if d, ok := ix.Device(ev.Subject); ok {
			ev.Class = d.Class
			if ev.Gateway == "" {
				ev.Gateway = d.Gateway
			}
		}
	}
	if ev.Zone == "" {
		ev.Zone, _ = ix.ZoneOf(ev.Subj())
	}
	// Cross-zone means toward another zone of devices (lateral), not the
	// cloud zone every device talks to: a zone without gateways is not one.
	if ev.CrossZone {
		if svc, ok := ix.Service(ev.Service); !ok || len(ix.GatewaysIn(svc.Zone)) == 0 {
			ev.CrossZone = false
		}
	}
	return true
}

// attribute decides whom a decision is about when the asking proxy is
// authenticated (proxy TLS): a gateway's Envoy asks about the devices
// behind it, so a Check naming anyone else is that gateway presenting an
// identity it may not, and counts against the gateway, never against the
// device or gateway it named (a compromised gateway must not be able to
// get others quarantined). A cloud edge's decisions repeat what the
// device's gateway asked, and are not counted again. Without proxy TLS
// nothing is authenticated and the principal is taken as given (a lab).
// It reports false for an event to drop.
func (m *monitorPart) attribute(ix *topology.Index, ev *monitor.Event) bool {
	if ev.Caller == "" {
		return true
	}
	caller, ok := ix.BySPIFFEID(ev.Caller)
	if !ok || caller.Kind != topology.KindGateway {
		// A cloud edge: its refusals of a forwarded identity name the
		// gateway that forwarded it, whose certificate the edge verified;
		// its other decisions repeat what the gateway reported. Any other
		// caller (a device's SVID asking for itself) is refused by the
		// authorizer and attributes nothing.
		_, kind, _, zoned := topology.ParseZonedID(ix.TrustDomain(), ev.Caller)
		return zoned && kind == "edge" && ev.Kind == monitor.EventUnknownIdentity
	}
	switch ev.Kind {
	case monitor.EventDecision:
		if ev.SubKind == topology.KindDevice {
			if d, ok := ix.Device(ev.Subject); ok && d.Gateway == caller.Name {
				return true
			}
		} else if ev.SubKind == topology.KindGateway && ev.Subject == caller.Name {
			return true
		}
		*ev = monitor.Event{Kind: monitor.EventUnknownIdentity, At: ev.At, SubKind: topology.KindGateway, Subject: caller.Name,
			Name: ev.Name, Detail: "asked about an identity that is not behind it", Caller: ev.Caller}
	case monitor.EventUnknownIdentity:
		ev.SubKind, ev.Subject = topology.KindGateway, caller.Name
	}
	return true
}

// clampTime keeps an event's time near this member's clock: gateways'
// access logs and signals carry their own times, and one far in the
// future would pin a window open and a finding undecayed.
func (m *monitorPart) clampTime(ev *monitor.Event) {
	now := m.n.cfg.Clock().UnixNano()
	if d := ev.At - now; d > int64(time.Minute) || d < -int64(time.Minute) {
		ev.At = now
	}
}

func (m *monitorPart) owner(s topology.Subject) string {
	r := m.ring.Load()
	if r == nil {
		return ""
	}
	return r.Owner(s)
}

// judge runs the engine on an event of a subject this member owns.
func (m *monitorPart) judge(ev *monitor.Event) {
	m.ingested.Add(1)
	found := m.eng.Observe(ev)
	if len(found) == 0 {
		return
	}
	info := m.info(ev.Subj())
	for _, f := range found {
		level := slog.LevelDebug // many a day in a city; the SIEM and incidents carry them
		if f.Severity == topology.SeverityHigh || f.Severity == topology.SeverityCritical {
			level = slog.LevelInfo
		}
		m.log.Log(context.Background(), level, "monitor: finding", "subject", f.Subject, "detector", f.Detector, "severity", f.Severity,
			"learning", f.Learning, "summary", f.Summary)
		if m.alerts != nil {
			m.alerts.finding(f, info)
		}
	}
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Ingest takes a batch forwarded by another member.
func (m *monitorPart) Ingest(_ context.Context, body []byte) error {
	var evs []monitor.Event
	if err := json.Unmarshal(body, &evs); err != nil {
		return fmt.Errorf("monitor events: %v", err)
	}
	if len(evs) > maxIngestBatch {
		return fmt.Errorf("monitor events: a batch of %d is more than %d", len(evs), maxIngestBatch)
	}
	for i := range evs {
		ev := &evs[i]
		if ev.SubKind != topology.KindDevice && ev.SubKind != topology.KindGateway || ev.Kind == 0 || ev.Kind > monitor.EventUnknownIdentity {
			continue
		}
		ev.Clip()
		m.clampTime(ev)
		if o := m.owner(ev.Subj()); o != "" && o != m.n.cfg.ID {
			m.misrouted.Add(1) // rings disagree for a moment: judge it here rather than lose it
		}
		m.judge(ev)
	}
	return nil
}

// Signal takes a gateway's signal.
func (m *monitorPart) Signal(_ context.Context, sub topology.Subject, req api.SignalRequest, actor string) (api.SignalResponse, error) {
	at := req.At
	if now := m.n.cfg.Clock(); at.IsZero() || at.After(now.Add(time.Minute)) {
		at = now
	}
	if !m.observe(monitor.Event{Kind: monitor.EventSignal, At: at.UnixNano(), SubKind: sub.Kind, Subject: sub.Name,
		Gateway: req.Gateway, Name: req.Signal, Detail: req.Detail}) {
		return api.SignalResponse{}, &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeInternal,
			Message: "the monitor's queue is full: the signal was not taken; retry"}
	}
	m.log.Info("monitor: signal", "subject", sub, "signal", req.Signal, "actor", actor)
	return api.SignalResponse{Accepted: true, Owner: m.owner(sub)}, nil
}

// watchRing follows the cluster's membership: the ring of owners is the
// Raft configuration's members. When it changes, subjects this member no
// longer owns are forgotten and those it gained take their replicated
// risk with them.
func (m *monitorPart) watchRing(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if st, err := m.n.store.Status(); err == nil && len(st.Members) > 0 {
			ids := make([]string, 0, len(st.Members))
			for _, mem := range st.Members {
				ids = append(ids, mem.ID)
			}
			r := monitor.NewRing(ids)
			if old := m.ring.Load(); !r.Equal(old) {
				m.ring.Store(r)
				m.log.Info("monitor: owners ring", "members", strings.Join(r.Members(), ","))
				m.takeOver(r)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (m *monitorPart) takeOver(r *monitor.Ring) {
	self := m.n.cfg.ID
	m.eng.Retain(func(s topology.Subject) bool { return r.Owner(s) == self })
	snap := m.n.store.Current()
	ix := snap.Index()
	snap.State().Range(func(s topology.Subject, st *topology.SubjectState) bool {
		if st.Risk != nil && st.Risk.Score > 0 && r.Owner(s) == self {
			class := ""
			if d, ok := ix.Device(s.Name); ok && s.Kind == topology.KindDevice {
				class = d.Class
			}
			m.eng.Seed(s, class, st.Risk)
		}
		return true
	})
}

// checkpoints saves the baselines now and then, and at shutdown.
func (m *monitorPart) checkpoints(ctx context.Context) error {
	t := time.NewTicker(m.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := m.eng.SaveFile(m.checkpointPath()); err != nil {
				m.log.Error("monitor: saving baselines at shutdown", "err", err)
			}
			return nil
		case <-t.C:
			if err := m.eng.SaveFile(m.checkpointPath()); err != nil {
				m.failed(&m.checkpointFailed, "saving baselines", err)
				m.log.Error("monitor: saving baselines", "err", err)
			}
		}
	}
}

// forwarder batches events for one peer and posts them to its API.
type forwarder struct {
	id string
	ch chan monitor.Event
}

func (m *monitorPart) forwarder(ctx context.Context, id string) *forwarder {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f := m.peers[id]; f != nil {
		return f
	}
	f := &forwarder{id: id, ch: make(chan monitor.Event, forwardQueue)}
	m.peers[id] = f
	go f.run(ctx, m)
	return f
}

func (f *forwarder) send(ev monitor.Event, m *monitorPart) {
	select {
	case f.ch <- ev:
	default:
		m.dropped.Add(1)
	}
}

func (f *forwarder) run(ctx context.Context, m *monitorPart) {
	batch := make([]monitor.Event, 0, forwardBatch)
	var failing time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-f.ch:
			batch = append(batch[:0], ev)
		}
		timer := time.NewTimer(forwardWindow)
	collect:
		for len(batch) < forwardBatch {
			select {
			case ev := <-f.ch:
				batch = append(batch, ev)
			case <-timer.C:
				break collect
			}
		}
		timer.Stop()
		if err := f.post(ctx, m, batch); err != nil {
			// The owner is unreachable: judge here rather than lose the
			// events (this member sees a part of the subject's traffic,
			// which is better than none). Said once a minute.
			if time.Since(failing) > time.Minute {
				m.log.Warn("monitor: cannot forward events to their owner; judging them here", "owner", f.id, "err", err)
				failing = time.Now()
			}
			m.forwardLost.Add(uint64(len(batch)))
			for i := range batch {
				m.judge(&batch[i])
			}
			continue
		}
		m.forwarded.Add(uint64(len(batch)))
	}
}

func (f *forwarder) post(ctx context.Context, m *monitorPart, batch []monitor.Event) error {
	mem, ok := m.n.store.Member(f.id)
	if !ok || mem.APIAddr == "" {
		return fmt.Errorf("member %s has no API address", f.id)
	}
	body, err := json.Marshal(batch)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return m.n.conn.Client(mem.APIAddr, m.n.peer).MonitorEvents(ctx, body)
}

// subjectInfo is what alerts and notifications say about a subject.
type subjectInfo struct {
	Subject  topology.Subject
	SPIFFEID string
	Zone     string
	Class    string
	Gateway  string
	Owner    string // the owner label
	Labels   topology.Labels
	Response topology.ClassResponse
}

func (m *monitorPart) info(s topology.Subject) subjectInfo {
	ix := m.n.store.Current().Index()
	in := subjectInfo{Subject: s, Response: topology.DefaultResponse()}
	in.SPIFFEID, _ = ix.SPIFFEID(s)
	in.Zone, _ = ix.ZoneOf(s)
	var labels []topology.Labels
	switch s.Kind {
	case topology.KindDevice:
		if d, ok := ix.Device(s.Name); ok {
			in.Class, in.Gateway, in.Labels = d.Class, d.Gateway, d.Labels
			labels = append(labels, d.Labels)
			if g, ok := ix.Gateway(d.Gateway); ok {
				labels = append(labels, g.Labels)
			}
		}
	case topology.KindGateway:
		if g, ok := ix.Gateway(s.Name); ok {
			in.Labels = g.Labels
			labels = append(labels, g.Labels)
		}
		// A gateway's quarantine cuts off every device behind it: an
		// operator approves it.
		in.Response.Approve = true
	}
	if c, ok := ix.Class(in.Class); ok {
		in.Response = c.Response
		labels = append(labels, c.Labels)
	}
	for _, l := range labels {
		if o := l["owner"]; o != "" {
			in.Owner = o
			break
		}
	}
	return in
}

// respondLoop publishes risk and starts playbooks when findings arrive,
// and every second for decay.
func (m *monitorPart) respondLoop(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastReconcile := time.Now()
	for {
		all := false
		select {
		case <-ctx.Done():
			return nil
		case <-m.kick:
		case <-t.C:
			all = true // decay: look at every subject at risk
		}
		m.respond(ctx, all)
		if all && time.Since(lastReconcile) >= reconcileEvery {
			lastReconcile = time.Now()
			m.reconcile(ctx)
		}
	}
}

// A playbook runs after its quarantine committed; a member that dies in
// between leaves a quarantined subject without its incident, evidence or
// alert. reconcile, every reconcileEvery, finds the monitor's quarantines
// of the subjects this member owns that are older than reconcileGrace
// (the playbook had its chance), younger than an hour, and have no
// incident opened since, and runs their playbooks.
var (
	reconcileEvery = 30 * time.Second
	reconcileGrace = 30 * time.Second
)

func (m *monitorPart) reconcile(ctx context.Context) {
	self := m.n.cfg.ID
	latest := map[topology.Subject]time.Time{}
	for _, inc := range m.n.store.Incidents() {
		if t, ok := latest[inc.Subject]; !ok || inc.OpenedAt.After(t) {
			latest[inc.Subject] = inc.OpenedAt
		}
	}
	snap := m.n.store.Current()
	now := m.n.cfg.Clock()
	type lost struct {
		sub topology.Subject
		st  *topology.SubjectState
	}
	var found []lost
	snap.State().Range(func(s topology.Subject, st *topology.SubjectState) bool {
		q := st.Quarantine
		if q == nil || !strings.HasPrefix(q.By, monitorBy+"@") || m.owner(s) != self {
			return true
		}
		if age := now.Sub(q.Since); age < reconcileGrace || age > time.Hour {
			return true
		}
		if t, ok := latest[s]; ok && !t.Before(q.Since.Add(-time.Minute)) {
			return true
		}
		found = append(found, lost{s, st})
		return true
	})
	for _, l := range found {
		if !m.startPlay(l.sub) {
			continue
		}
		r := m.eng.RiskOf(l.sub, now)
		if r.Score == 0 && l.st.Risk != nil {
			r = monitor.Risk{Subject: l.sub, Score: l.st.Risk.Score, Signals: l.st.Risk.Signals}
		}
		m.log.Warn("monitor: a quarantine without its incident: running its playbook", "subject", l.sub, "since", l.st.Quarantine.Since)
		p := &play{sub: l.sub, info: m.info(l.sub), risk: r, quarantine: true, at: l.st.Quarantine.Since.UTC()}
		m.plays.Add(1)
		go func() {
			defer m.plays.Done()
			m.playbook(ctx, p)
		}()
	}
}

// play is a playbook to run for a subject whose risk reached quarantineAt.
type play struct {
	sub        topology.Subject
	info       subjectInfo
	risk       monitor.Risk
	quarantine bool   // quarantined in the same write as its risk
	skip       string // why the quarantine was not automatic
	at         time.Time
}

// publishBatch bounds the risk updates proposed together.
const publishBatch = 256

func (m *monitorPart) respond(ctx context.Context, all bool) {
	now := m.n.cfg.Clock().UTC()
	pend := m.eng.Pending(now, all)
	if len(pend) == 0 {
		return
	}
	snap := m.n.store.Current()
	ix := snap.Index()
	var wg sync.WaitGroup
	var plain []monitor.Risk
	var plainOps []raft.StateOp
	self := m.n.cfg.ID
	for _, r := range pend {
		if !ix.Exists(r.Subject) {
			m.eng.Forget(r.Subject)
			continue
		}
		if o := m.owner(r.Subject); o != "" && o != self {
			// Judged here only because its owner could not be reached:
			// the owner's view is the one published, never a part of it.
			continue
		}
		ops := []raft.StateOp{{Subject: r.Subject, Op: raft.OpSetRisk,
			Risk: &topology.Risk{Score: r.Score, Signals: r.Signals, UpdatedAt: now}}}
		var p *play
		info := m.info(r.Subject)
		if r.Score >= info.Response.QuarantineAt && !snap.Quarantined(r.Subject) && m.hasNews(r) && m.startPlay(r.Subject) {
			p = &play{sub: r.Subject, info: info, risk: r, at: now}
			switch {
			case info.Response.Approve:
				p.skip = "class response mode is approve: waiting for `vigil incident approve`"
			case info.Response.NeverQuarantine[r.Subject.Name] && r.Subject.Kind == topology.KindDevice:
				p.skip = "the device is on its class's neverQuarantine list"
			default:
				p.quarantine = true
				ops = append(ops, raft.StateOp{Subject: r.Subject, Op: raft.OpQuarantine, Quarantine: &topology.Quarantine{
					Reason: clipReason(fmt.Sprintf("monitor: risk %d reached quarantineAt %d (%s)", r.Score, info.Response.QuarantineAt, detectorsOf(r.Signals))),
					By:     monitorBy + "@" + m.n.cfg.ID, Since: now}})
			}
		}
		if p == nil {
			plain = append(plain, r)
			plainOps = append(plainOps, ops...)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.publish(ctx, []monitor.Risk{r}, ops, p, now)
		}()
	}
	// Risk updates without a playbook go together, a few hundred per entry.
	for len(plain) > 0 {
		k := min(len(plain), publishBatch)
		rs, ops := plain[:k], plainOps[:k]
		plain, plainOps = plain[k:], plainOps[k:]
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.publish(ctx, rs, ops, nil, now)
		}()
	}
	wg.Wait()
}

// publish proposes the risk (and, for a playbook, the quarantine) of rs
// and starts the playbook once it is committed.
func (m *monitorPart) publish(ctx context.Context, rs []monitor.Risk, ops []raft.StateOp, p *play, now time.Time) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := m.n.attest.record(cctx, ops)
	if err != nil {
		if p != nil {
			m.endPlay(p.sub)
		}
		if errors.Is(err, raft.ErrRejected) {
			ix := m.n.store.Current().Index()
			for _, r := range rs {
				if !ix.Exists(r.Subject) {
					m.eng.Forget(r.Subject) // gone from the topology meanwhile; the others are retried
				}
			}
		}
		m.failed(&m.publishFailed, "publishing risk", err)
		m.log.Warn("monitor: publishing risk failed; retrying", "subjects", len(rs), "first", rs[0].Subject, "risk", rs[0].Score, "err", err)
		return
	}
	for _, r := range rs {
		m.eng.Published(r.Subject, r.Score, now)
	}
	if p == nil {
		return
	}
	if p.quarantine {
		m.quarantines.Add(1)
		m.log.Warn("monitor: quarantined", "subject", p.sub, "risk", p.risk.Score, "findings", detectorsOf(p.risk.Signals))
	}
	m.plays.Add(1)
	go func() {
		defer m.plays.Done()
		m.playbook(ctx, p)
	}()
}

func detectorsOf(sigs []topology.Signal) string {
	names := make([]string, 0, len(sigs))
	for _, s := range sigs {
		if !slices.Contains(names, s.Name) {
			names = append(names, s.Name)
		}
	}
	return strings.Join(names, ", ")
}

// hasNews reports whether r is worth a playbook: the subject has no open
// incident, or r holds findings its open incident does not (a decaying
// risk still above quarantineAt, awaiting approval, is not news).
func (m *monitorPart) hasNews(r monitor.Risk) bool {
	inc, open := m.n.store.OpenIncidentOf(r.Subject)
	if !open {
		return true
	}
	have := map[string]bool{}
	for _, f := range inc.Findings {
		have[f.ID] = true
	}
	for _, s := range r.Signals {
		if s.Finding != "" && !have[s.Finding] {
			return true
		}
	}
	return false
}

func (m *monitorPart) startPlay(s topology.Subject) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.playing[s] {
		return false
	}
	m.playing[s] = true
	return true
}

func (m *monitorPart) endPlay(s topology.Subject) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.playing, s)
}

func newIncidentID(at time.Time) string {
	b := make([]byte, 4)
	rand.Read(b)
	return "inc-" + at.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

// playbook opens the incident and runs the rest of the response: evidence,
// alert, owner notification, each recorded as an action with its outcome.
func (m *monitorPart) playbook(ctx context.Context, p *play) {
	defer m.endPlay(p.sub)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	by := monitorBy + "@" + m.n.cfg.ID
	inc := topology.Incident{
		ID: newIncidentID(p.at), Subject: p.sub, Status: topology.IncidentOpen, Mode: "auto",
		Title:    fmt.Sprintf("%s %s: risk %d (%s)", p.sub.Kind, p.sub.Name, p.risk.Score, detectorsOf(p.risk.Signals)),
		OpenedAt: p.at, OpenedBy: m.n.cfg.ID, Risk: p.risk.Score, Findings: m.eng.RiskOf(p.sub, p.at).Findings,
		Timeline: []topology.RiskPoint{{At: p.at, Score: p.risk.Score}},
	}
	if len(inc.Findings) > 64 {
		inc.Findings = inc.Findings[len(inc.Findings)-64:]
	}
	if p.info.Response.Approve {
		inc.Mode = "approve"
	}
	restrict := topology.Action{At: p.at, Name: "restrict", Outcome: topology.ActionOK, By: by,
		Detail: fmt.Sprintf("risk %d ≥ restrictAt %d: only essential flows are allowed", p.risk.Score, p.info.Response.RestrictAt)}
	switch {
	case p.quarantine:
		inc.Actions = []topology.Action{{At: p.at, Name: "quarantine", Outcome: topology.ActionOK, By: by,
			Detail: "authz denies everywhere; RBAC pushed to gateways; SPIRE entry deleted"}}
	case p.info.Response.Approve:
		inc.Status = topology.IncidentAwaiting
		inc.Actions = []topology.Action{restrict, {At: p.at, Name: "quarantine", Outcome: topology.ActionWaiting, By: by, Detail: p.skip}}
	default:
		inc.Actions = []topology.Action{restrict, {At: p.at, Name: "quarantine", Outcome: topology.ActionSkipped, By: by, Detail: p.skip}}
	}
	self := m.n.conn.Client(m.n.apiAddr, m.n.peer)
	if err := self.OpenIncident(ctx, inc); err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code == api.CodeIncidentExists {
			// The subject's incident is still open (released while it
			// was, or an approval pending): what happened now goes into it.
			err := self.UpdateIncident(ctx, raft.IncidentUpdate{ID: ae.Message, At: p.at, Risk: p.risk.Score,
				Findings: newFindings(inc.Findings, ae.Message, m), Timeline: inc.Timeline, Actions: inc.Actions})
			if err != nil {
				m.failed(&m.incidentFailed, "updating incident "+ae.Message, err)
				m.log.Error("monitor: updating the subject's open incident failed", "subject", p.sub, "incident", ae.Message, "err", err)
				return
			}
			m.log.Warn("monitor: the subject's open incident updated", "subject", p.sub, "incident", ae.Message, "risk", p.risk.Score,
				"quarantined", p.quarantine)
			if m.alerts != nil {
				inc.ID = ae.Message
				m.alerts.incident(inc, p.info)
			}
			return
		}
		m.failed(&m.incidentFailed, "opening an incident", err)
		m.log.Error("monitor: opening an incident failed", "subject", p.sub, "err", err)
		return
	}
	m.incidents.Add(1)
	m.log.Warn("monitor: incident opened", "incident", inc.ID, "subject", p.sub, "status", inc.Status, "risk", p.risk.Score)
	update := func(a topology.Action) {
		if err := self.UpdateIncident(ctx, raft.IncidentUpdate{ID: inc.ID, At: a.At, Actions: []topology.Action{a}}); err != nil {
			m.log.Error("monitor: recording an incident action failed", "incident", inc.ID, "action", a.Name, "err", err)
		}
	}
	// Alert first: the SOC should hear of it before the slow evidence.
	alert := topology.Action{At: m.n.cfg.Clock().UTC(), Name: "alert", By: by, Outcome: topology.ActionSkipped, Detail: "no SIEM export configured"}
	if m.alerts != nil {
		alert.Outcome, alert.Detail = topology.ActionOK, m.alerts.incident(inc, p.info)
	}
	update(alert)
	update(m.notifyOwner(ctx, inc, p.info, by))
	update(m.seal(ctx, inc, p.info, by))
}

// newFindings are the findings of fs that incident id does not hold yet.
func newFindings(fs []topology.Finding, id string, m *monitorPart) []topology.Finding {
	inc, ok := m.n.store.Incident(id)
	if !ok {
		return fs
	}
	have := map[string]bool{}
	for _, f := range inc.Findings {
		have[f.ID] = true
	}
	var out []topology.Finding
	for _, f := range fs {
		if !have[f.ID] {
			out = append(out, f)
		}
	}
	return out
}

// Status describes the monitor for GET /v1/node.
func (m *monitorPart) Status() any {
	m.mu.Lock()
	peers := slices.Sorted(maps.Keys(m.peers))
	m.mu.Unlock()
	out := map[string]any{
		"engine": m.eng.Stats(), "queued": len(m.in), "dropped": m.dropped.Load(), "forwarded": m.forwarded.Load(),
		"forwardFailed": m.forwardLost.Load(), "misrouted": m.misrouted.Load(), "judged": m.ingested.Load(),
		"quarantines": m.quarantines.Load(), "incidentsOpened": m.incidents.Load(), "forwardingTo": peers,
		"accessLog": m.access.status(), "publishFailed": m.publishFailed.Load(), "incidentFailed": m.incidentFailed.Load(),
		"checkpointFailed": m.checkpointFailed.Load(),
	}
	if e, ok := m.lastError.Load().(string); ok {
		out["lastError"] = e
	}
	if r := m.ring.Load(); r != nil {
		out["ring"] = r.Members()
	}
	if m.alerts != nil {
		out["siem"] = m.alerts.status()
	}
	return out
}

// Bundle opens the evidence bundle of an incident this member sealed.
func (m *monitorPart) Bundle(id string) (io.ReadCloser, error) {
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return nil, fmt.Errorf("incident id %q is not valid", id)
		}
	}
	f, err := os.Open(filepath.Join(m.evidenceDir(), id+".log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("member %s holds no evidence bundle for incident %s", m.n.cfg.ID, id)
	}
	return f, err
}
