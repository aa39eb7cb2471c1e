package fleetsim

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/topology"
)

// Config sets up a simulation.
type Config struct {
	// Server is the API address of the member the simulator reads the
	// topology and cluster from, and sends enrollments, evidence and
	// signals to; Token is its bearer token. Connector (nil: the default
	// one, which verifies https members with the system's roots) makes the
	// API clients, also those of the other members it polls.
	Server    string
	Token     string
	Connector *api.Connector
	// AuthzAddrs are members' ext_authz addresses (plain gRPC); Checks are
	// spread over them in turn, so a device's traffic reaches every one.
	// XDSAddrs are members' xDS addresses, where each simulated gateway
	// opens its access log stream (gateways spread over them).
	AuthzAddrs, XDSAddrs []string
	// Devices is how many devices send (0: every device with a flow to a
	// service; else the first N, spread over classes).
	Devices int
	// Rate multiplies the benign rate (default 1: a request every ~10s per
	// device); rate limits still win.
	Rate float64
	// Duration is how long the benign fleet runs (0: until ctx ends).
	// With Scenarios the run ends as soon as they have reported, unless
	// KeepRunning, which keeps the fleet going until Duration or ctx.
	Duration    time.Duration
	KeepRunning bool
	// Attest enrolls a simulated TPM for and attests every simulated
	// device whose class requires attestation and that holds no passing
	// attestation for the next hour. Scenario targets are attested when
	// they need it, whatever Attest says.
	Attest bool
	// Scenarios to play, in order ("all" for every one): see Scenarios.
	Scenarios []string
	// Targets names the device a scenario attacks (key: the scenario; ""
	// for any scenario, when only one is played); default: one picked per
	// scenario from the simulated devices.
	Targets map[string]string
	// Warmup is how long benign traffic runs before the first attack:
	// 0 picks it (at least 60s when a scenario relies on the monitor's
	// statistical baselines, see AutoWarmup; 15s otherwise); negative
	// plays the scenarios at once.
	Warmup time.Duration
	// Timeout bounds how long a scenario waits, from its first attack
	// request, for the quarantine (default 30s).
	Timeout time.Duration
	// CheckAll sends every request to ext_authz. By default the simulator
	// answers as the gateway's Envoy would first: requests no route of the
	// gateway covers get its 403 catch-all, quarantined devices its RBAC
	// 403, requests over a route's local rate limit its 429, and only the
	// access log shows them.
	CheckAll bool
	// Seed makes target picks, offsets, jitter and sizes reproducible.
	Seed uint64
	// Out receives progress lines (nil: none).
	Out io.Writer
	// OnScenario is called with each scenario's result as it is known.
	OnScenario func(ScenarioResult)
}

// Sim is a simulated fleet, ready to run.
type Sim struct {
	cfg     Config
	api     *api.Client
	conn    *api.Connector
	ix      *topology.Index
	members []member
	fleet   []*Device
	idle    int
	byName  map[string]*Device // the fleet

	authz []authv3.AuthorizationClient
	conns []*grpc.ClientConn
	rr    atomic.Uint64
	reqID atomic.Uint64

	mu       sync.Mutex
	gateways map[string]*gatewayModel
	streams  map[string]*alsStream
	gwIndex  map[string]int
	kick     chan struct{}

	stats   *traffic
	errMu   sync.Mutex
	errs    []string
	errSeen map[string]bool

	refusedErr atomic.Pointer[error] // a member refusing the simulator: fatal
	started    time.Time
}

type member struct {
	ID, Addr string
	client   *api.Client
}

// New connects to the cluster at cfg.Server, reads its topology and
// members, checks that its ext_authz and xDS addresses accept the
// simulator (plain gRPC) and plans the fleet.
func New(ctx context.Context, cfg Config) (*Sim, error) {
	if cfg.Server == "" {
		cfg.Server = api.DefaultAddr
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 1
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if len(cfg.AuthzAddrs) == 0 {
		cfg.AuthzAddrs = []string{"127.0.0.1:9191"}
	}
	if len(cfg.XDSAddrs) == 0 {
		cfg.XDSAddrs = []string{"127.0.0.1:18000"}
	}
	names, err := ScenarioNames(cfg.Scenarios)
	if err != nil {
		return nil, err
	}
	cfg.Scenarios = names
	if t := cfg.Targets[""]; t != "" && len(names) > 1 {
		return nil, fmt.Errorf("a target without a scenario (%s) needs exactly one scenario; name it as SCENARIO=DEVICE", t)
	}
	for sc := range cfg.Targets {
		if sc != "" && !slices.Contains(names, sc) {
			return nil, fmt.Errorf("target given for scenario %q, which is not played", sc)
		}
	}
	conn := cfg.Connector
	if conn == nil {
		conn = api.NewConnector(nil)
	}
	s := &Sim{cfg: cfg, conn: conn, api: conn.Client(cfg.Server, cfg.Token), gateways: map[string]*gatewayModel{},
		streams: map[string]*alsStream{}, gwIndex: map[string]int{}, kick: make(chan struct{}, 1),
		errSeen: map[string]bool{}}
	top, err := s.api.Topology(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the topology from %s: %w", cfg.Server, err)
	}
	if top.Document == nil {
		return nil, fmt.Errorf("the cluster at %s holds no topology yet: apply one first (vigil topology apply -f FILE)", cfg.Server)
	}
	if s.ix, err = topology.NewIndex(top.Document); err != nil {
		return nil, fmt.Errorf("the cluster's topology: %w", err)
	}
	for i, g := range s.ix.Gateways() {
		s.gwIndex[g.Name] = i
	}
	s.members = s.discover(ctx)
	s.fleet, s.idle = Plan(s.ix, cfg.Devices, cfg.Rate)
	s.byName = make(map[string]*Device, len(s.fleet))
	for _, d := range s.fleet {
		s.byName[d.Name] = d
	}
	s.stats = newTraffic()
	if err := s.dial(ctx); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// discover lists the members to poll: the cluster's voters as the
// server reports them, or the server alone.
func (s *Sim) discover(ctx context.Context) []member {
	st, err := s.api.ClusterStatus(ctx)
	if err != nil || len(st.Members) == 0 {
		return []member{{ID: s.cfg.Server, Addr: s.cfg.Server, client: s.api}}
	}
	var out []member
	tls := strings.HasPrefix(s.cfg.Server, "https://")
	for _, m := range st.Members {
		if m.APIAddr == "" {
			continue
		}
		addr := m.APIAddr
		if tls && !strings.Contains(addr, "://") {
			addr = "https://" + addr
		}
		out = append(out, member{ID: m.ID, Addr: addr, client: s.conn.Client(addr, s.cfg.Token)})
	}
	if len(out) == 0 {
		return []member{{ID: s.cfg.Server, Addr: s.cfg.Server, client: s.api}}
	}
	slices.SortFunc(out, func(a, b member) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// dial opens the gRPC connections and checks that each member answers
// the simulator: ext_authz's health service, and an access log stream
// (identifier only) on the xDS port.
func (s *Sim) dial(ctx context.Context) error {
	for _, addr := range s.cfg.AuthzAddrs {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return fmt.Errorf("ext_authz %s: %w", addr, err)
		}
		s.conns = append(s.conns, cc)
		s.authz = append(s.authz, authv3.NewAuthorizationClient(cc))
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = healthpb.NewHealthClient(cc).Check(pctx, &healthpb.HealthCheckRequest{Service: authv3.Authorization_ServiceDesc.ServiceName})
		cancel()
		if err != nil {
			return fmt.Errorf("ext_authz at %s does not answer: %w%s", addr, err, hintFor(err))
		}
	}
	gws := s.ix.Gateways()
	for i, addr := range s.cfg.XDSAddrs {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return fmt.Errorf("xDS %s: %w", addr, err)
		}
		s.conns = append(s.conns, cc)
		if len(gws) == 0 {
			continue
		}
		// Probe with a stream of one gateway that carries no entries.
		gw := s.gateway(gws[i%len(gws)].Name)
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = func() error {
			st, err := alsv3.NewAccessLogServiceClient(cc).StreamAccessLogs(pctx)
			if err != nil {
				return err
			}
			if err := st.Send(&alsv3.StreamAccessLogsMessage{Identifier: identifier(gw)}); err != nil {
				_, rerr := st.CloseAndRecv()
				return cmpErr(rerr, err)
			}
			_, err = st.CloseAndRecv()
			return err
		}()
		cancel()
		if err != nil {
			return fmt.Errorf("access log service at %s refuses the simulator: %w%s", addr, err, hintFor(err))
		}
	}
	return nil
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func (s *Sim) close() {
	for _, cc := range s.conns {
		cc.Close()
	}
}

// Fleet is the simulated devices.
func (s *Sim) Fleet() []*Device { return s.fleet }

// Index is the topology simulated.
func (s *Sim) Index() *topology.Index { return s.ix }

// gateway returns the model of a gateway, built on first use.
func (s *Sim) gateway(name string) *gatewayModel {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.gateways[name]
	if g == nil {
		gw, _ := s.ix.Gateway(name)
		g = newGatewayModel(s.ix, gw)
		s.gateways[name] = g
	}
	return g
}

// stream returns a gateway's access log stream, to the xDS address the
// gateway falls on.
func (s *Sim) stream(g *gatewayModel) *alsStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.streams[g.name]
	if a == nil {
		i := s.gwIndex[g.name] % len(s.cfg.XDSAddrs)
		a = &alsStream{gw: g, addr: s.cfg.XDSAddrs[i],
			client: alsv3.NewAccessLogServiceClient(s.conns[len(s.cfg.AuthzAddrs)+i])}
		s.streams[g.name] = a
	}
	return a
}

func (s *Sim) progress(format string, args ...any) {
	if s.cfg.Out != nil {
		fmt.Fprintf(s.cfg.Out, format+"\n", args...)
	}
}

// fail records an error for the report, and says it once.
func (s *Sim) fail(err error) {
	msg := err.Error()
	s.errMu.Lock()
	defer s.errMu.Unlock()
	if s.errSeen[msg] {
		return
	}
	s.errSeen[msg] = true
	if len(s.errs) < 20 {
		s.errs = append(s.errs, msg)
	}
	s.progress("error: %s", msg)
}

// send makes one request through the device's gateway: the gateway's own
// answer, else a Check at the next authorizer; then the access log entry.
func (s *Sim) send(ctx context.Context, r *request) outcome {
	g := s.gateway(r.dev.Gateway)
	start := time.Now()
	var o outcome
	var rt *route
	if !s.cfg.CheckAll {
		rt = g.route(r.host, r.method, r.path)
		o.local = g.local(r.dev.Name, rt, start)
	} else {
		g.mu.Lock()
		if g.blocked[r.dev.Name] {
			o.local = localRBAC
		}
		g.mu.Unlock()
	}
	if rt != nil {
		o.service = rt.service
	}
	id := "sim-" + strconv.FormatUint(s.reqID.Add(1), 36)
	if o.local != "" {
		o.status = 403
		if o.local == localRateLimit {
			o.status = 429
		}
	} else {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		i := int(s.rr.Add(1)-1) % len(s.authz)
		resp, err := s.authz[i].Check(cctx, checkRequest(r, g.id, o.service, id, start))
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				o.err = fmt.Errorf("ext_authz at %s: %w%s", s.cfg.AuthzAddrs[i], err, hintFor(err))
				if refused(err) {
					s.refusedErr.CompareAndSwap(nil, &o.err)
				}
				s.fail(o.err)
			}
			return o
		}
		readCheck(resp, &o)
		if !o.allowed && strings.Contains(o.reason, " is quarantined") {
			g.block(r.dev.Name, true) // the RBAC push follows a quarantine
		}
		if o.allowed && o.service == "" {
			if svc, ok := s.ix.ServiceByHost(strings.ToLower(hostOnly(r.host))); ok {
				o.service = svc.Name
			}
		}
	}
	took := time.Since(start)
	if o.allowed {
		took += 3 * time.Millisecond // the upstream's answer
	}
	if s.stream(g).add(accessEntry(r, &o, g.id, id, start, took)) || r.attack {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return o
}

// flusher sends the access log streams' buffers every second, or when
// one is due, until ctx ends; then ends every stream.
func (s *Sim) flusher(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(alsFlushInterval)
	defer t.Stop()
	// Streams live on a context of their own, so that the last flush
	// still goes out after ctx ended.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	flushAll := func() {
		s.mu.Lock()
		streams := make([]*alsStream, 0, len(s.streams))
		for _, a := range s.streams {
			streams = append(streams, a)
		}
		s.mu.Unlock()
		for _, a := range streams {
			n, err := a.flush(sctx)
			s.stats.logged.Add(uint64(n))
			if err != nil {
				if refused(err) {
					s.refusedErr.CompareAndSwap(nil, &err)
				}
				s.fail(err)
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			s.mu.Lock()
			streams := make([]*alsStream, 0, len(s.streams))
			for _, a := range s.streams {
				streams = append(streams, a)
			}
			s.mu.Unlock()
			ectx, ecancel := context.WithTimeout(sctx, 5*time.Second)
			for _, a := range streams {
				a.mu.Lock()
				n := len(a.pending)
				a.mu.Unlock()
				if err := a.end(ectx); err != nil {
					s.fail(err)
				} else {
					s.stats.logged.Add(uint64(n))
				}
				s.stats.alsLost.Add(a.lost)
			}
			ecancel()
			return
		case <-t.C:
		case <-s.kick:
		}
		flushAll()
	}
}

// The benign fleet: a scheduler hands each due (device, target) to a pool
// of workers, which send it and schedule its next time.

type due struct {
	at  time.Time
	dev *Device
	t   int
}

type dueHeap []due

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(due)) }
func (h *dueHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

const workers = 16

func (s *Sim) runFleet(ctx context.Context) {
	rng := rand.New(rand.NewPCG(s.cfg.Seed, 0x5eed))
	h := dueHeap{}
	now := time.Now()
	for _, d := range s.fleet {
		for i, t := range d.Targets {
			h = append(h, due{at: now.Add(time.Duration(rng.Float64() * float64(t.Interval))), dev: d, t: i})
		}
	}
	heap.Init(&h)
	work := make(chan due, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wrng := rand.New(rand.NewPCG(s.cfg.Seed, uint64(w)+1))
			for j := range work {
				s.benign(ctx, j.dev, j.t, wrng)
			}
		}()
	}
	defer wg.Wait()
	defer close(work)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for len(h) > 0 {
		next := h[0]
		timer.Reset(time.Until(next.at))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		heap.Pop(&h)
		select {
		case work <- next:
		case <-ctx.Done():
			return
		}
		iv := next.dev.Targets[next.t].Interval
		next.at = next.at.Add(time.Duration(float64(iv) * (0.8 + 0.4*rng.Float64())))
		if now := time.Now(); next.at.Before(now) {
			next.at = now.Add(time.Duration(rng.Float64() * float64(iv) / 4)) // behind: no catch-up burst
		}
		heap.Push(&h, next)
	}
}

func (s *Sim) benign(ctx context.Context, d *Device, ti int, rng *rand.Rand) {
	t := &d.Targets[ti]
	sz := sizesOf(d.Class)
	r := &request{dev: d, host: t.Host, method: t.Method, path: t.Path(d.seq.Add(1), d)}
	if t.HasBody() {
		r.body = sz.bodyMin + rng.Int64N(sz.bodyMax-sz.bodyMin+1)
		r.respBody = sz.respMin + rng.Int64N(sz.respMax-sz.respMin+1)
	} else {
		r.respBody = sz.getMin + rng.Int64N(sz.getMax-sz.getMin+1)
	}
	o := s.send(ctx, r)
	if ctx.Err() != nil && o.err == nil && !o.checked && o.local == "" {
		return
	}
	s.stats.count(d.Class, &o)
}

// Run runs the simulation: attestation, the benign fleet, the warm-up
// and the scenarios, and returns what happened. It ends at Duration, when
// the scenarios have reported (unless KeepRunning), when ctx ends, or when
// a member refuses the simulator (the error says why).
func (s *Sim) Run(ctx context.Context) (*Report, error) {
	defer s.close()
	s.started = time.Now()
	rep := &Report{Version: ReportVersion, Started: s.started.UTC(), Mode: "gateway",
		Authz: s.cfg.AuthzAddrs, XDS: s.cfg.XDSAddrs, Devices: len(s.fleet), Idle: s.idle}
	if s.cfg.CheckAll {
		rep.Mode = "check-all"
	}
	for _, m := range s.members {
		rep.Members = append(rep.Members, MemberRef{ID: m.ID, API: m.Addr})
	}
	gws := map[string]bool{}
	for _, d := range s.fleet {
		gws[d.Gateway] = true
	}
	rep.Gateways = len(gws)
	s.progress("fleet: %d devices behind %d gateways (%s), %.1f requests/s; ext_authz %s; access logs to %s; %d member%s; %s mode",
		len(s.fleet), len(gws), s.classSummary(), s.requestRate(), strings.Join(s.cfg.AuthzAddrs, ","),
		strings.Join(s.cfg.XDSAddrs, ","), len(s.members), plural(len(s.members)), rep.Mode)

	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	if s.cfg.Attest {
		rep.Attestation = s.attestFleet(runCtx)
		s.progress("attestation: %d attested, %d already valid, %d failed, %d not attestable by the simulator",
			rep.Attestation.Attested, rep.Attestation.Valid, len(rep.Attestation.Failed), rep.Attestation.Unsupported)
	}
	plays, err := s.pickTargets(runCtx)
	if err != nil {
		return nil, err
	}
	warmup := s.cfg.Warmup
	if warmup == 0 && len(plays) > 0 {
		warmup = s.AutoWarmup(plays)
	}
	warmup = max(warmup, 0)
	if len(plays) > 0 {
		rep.WarmupSeconds = warmup.Seconds()
		var names []string
		for _, p := range plays {
			if p.dev != nil {
				names = append(names, fmt.Sprintf("%s → %s (%s, %s)", p.sc.name, p.dev.Name, p.dev.Class, p.mode))
			} else {
				names = append(names, fmt.Sprintf("%s → none (%s)", p.sc.name, p.err))
			}
		}
		s.progress("scenarios: %s; warm-up %s", strings.Join(names, "; "), warmup.Round(time.Second))
	}

	// The fleet and its access logs run until the run ends.
	fleetCtx, stopFleet := context.WithCancel(runCtx)
	alsCtx, stopALS := context.WithCancel(context.WithoutCancel(runCtx))
	flushed := make(chan struct{})
	go s.flusher(alsCtx, flushed)
	fleetDone := make(chan struct{})
	go func() { defer close(fleetDone); s.runFleet(fleetCtx) }()
	go s.followRBAC(fleetCtx)
	go s.report(fleetCtx)
	stop := func() {
		stopFleet()
		<-fleetDone // no entry is added after this
		stopALS()
		<-flushed
	}
	defer stop()

	var deadline <-chan time.Time
	if s.cfg.Duration > 0 {
		t := time.NewTimer(s.cfg.Duration)
		defer t.Stop()
		deadline = t.C
	}
	if len(plays) > 0 {
		if s.until(runCtx, time.After(warmup)) {
			for _, p := range plays {
				if runCtx.Err() != nil || s.refusedErr.Load() != nil {
					break
				}
				res := s.play(runCtx, p)
				rep.Scenarios = append(rep.Scenarios, res)
				s.progress("%s", res.Line())
				if s.cfg.OnScenario != nil {
					s.cfg.OnScenario(res)
				}
			}
		}
		if s.cfg.KeepRunning {
			s.until(runCtx, deadline)
		}
	} else {
		s.until(runCtx, deadline)
	}
	stop() // idempotent: also deferred, for the early returns
	rep.Ended = time.Now().UTC()
	rep.Classes, rep.Totals = s.stats.report(s.fleet)
	s.finish(context.WithoutCancel(ctx), rep)
	s.errMu.Lock()
	rep.Errors = slices.Clone(s.errs)
	s.errMu.Unlock()
	rep.normalize()
	if p := s.refusedErr.Load(); p != nil {
		return rep, *p
	}
	return rep, nil
}

// until waits for the deadline (nil: none), ctx or a member's refusal,
// and reports whether the deadline came.
func (s *Sim) until(ctx context.Context, deadline <-chan time.Time) bool {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			return true
		case <-tick.C:
			if s.refusedErr.Load() != nil {
				return false
			}
		}
	}
}

// report prints the traffic every 30s.
func (s *Sim) report(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, tot := s.stats.report(s.fleet)
			s.progress("traffic after %s: %d sent, %d checked (%d allowed, %d denied), %d answered by the gateways, %d errors, %d access log entries",
				time.Since(s.started).Round(time.Second), tot.Sent, tot.Checked, tot.Allowed, tot.Denied, tot.GatewayDenied, tot.Errors, tot.AccessLogs)
		}
	}
}

// followRBAC lifts the simulated RBAC of devices released meanwhile.
func (s *Sim) followRBAC(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		gws := make([]*gatewayModel, 0, len(s.gateways))
		for _, g := range s.gateways {
			gws = append(gws, g)
		}
		s.mu.Unlock()
		for _, g := range gws {
			for _, d := range g.blockedDevices() {
				sub, err := s.api.Subject(ctx, topology.KindDevice, d)
				if err == nil && !sub.Quarantined {
					g.block(d, false)
				}
			}
		}
	}
}

func (s *Sim) classSummary() string {
	n := map[string]int{}
	for _, d := range s.fleet {
		n[d.Class]++
	}
	var parts []string
	for _, c := range sortedKeys(n) {
		parts = append(parts, fmt.Sprintf("%s %d", c, n[c]))
	}
	return strings.Join(parts, ", ")
}

// requestRate is the fleet's benign requests per second.
func (s *Sim) requestRate() float64 {
	r := 0.0
	for _, d := range s.fleet {
		for _, t := range d.Targets {
			r += 1 / t.Interval.Seconds()
		}
	}
	return r
}

// ClassWarmup is how many samples the monitor's class baselines need on
// each member before its statistical detectors judge (monitor.Config's
// default ClassWarmup), and Window its window.
const (
	ClassWarmup = 50
	Window      = 10 * time.Second
)

// AutoWarmup is the warm-up that lets the monitor's class baselines of
// the scenarios' targets fill on every member, for the scenarios that
// rely on them (exfiltration: request sizes; flood: requests and bytes
// per window): a class baseline learns from the devices of the class that
// member owns (about 1/members of them), one sample per device and window
// (rate, volume) or allowed request (size). It is 1.5 times that, at
// least 60s and at most 10m; 15s when no scenario needs a baseline.
func (s *Sim) AutoWarmup(plays []*play) time.Duration {
	need := 15 * time.Second
	members := max(len(s.members), 1)
	for _, p := range plays {
		if !p.sc.statistical || p.dev == nil {
			continue
		}
		need = max(need, 60*time.Second)
		n, body := 0, 0.0
		for _, d := range s.fleet {
			if d.Class != p.dev.Class {
				continue
			}
			n++
			for _, t := range d.Targets {
				if t.HasBody() {
					body += 1 / t.Interval.Seconds()
				}
			}
		}
		if n == 0 {
			need = max(need, 10*time.Minute)
			continue
		}
		per := Window.Seconds() // one sample per device and window
		if body > 0 {
			per = max(per, float64(n)/body) // one per allowed request with a body
		}
		t := time.Duration(1.5 * ClassWarmup * per * float64(members) / float64(n) * float64(time.Second))
		need = max(need, t)
	}
	return min(need, 10*time.Minute).Round(time.Second)
}

// finish fills in the quarantines and incidents of the run.
func (s *Sim) finish(ctx context.Context, rep *Report) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	targets := map[string]string{}
	for _, sc := range rep.Scenarios {
		if sc.Target != "" {
			targets[sc.Target] = sc.Scenario
		}
	}
	cands := map[string]bool{}
	for d := range targets {
		cands[d] = true
	}
	s.mu.Lock()
	for _, g := range s.gateways {
		for d := range g.blocked {
			cands[d] = true
		}
	}
	s.mu.Unlock()
	since := s.started.Add(-time.Second)
	if incs, err := s.api.Incidents(ctx, ""); err == nil {
		for _, inc := range incs {
			if inc.OpenedAt.Before(since) {
				continue
			}
			rep.Incidents = append(rep.Incidents, IncidentRef{ID: inc.ID, Subject: inc.Subject.String(), Status: inc.Status,
				Risk: inc.Risk, Title: inc.Title, Scenario: targets[inc.Subject.Name]})
			if inc.Subject.Kind == topology.KindDevice {
				cands[inc.Subject.Name] = true
			}
		}
	} else {
		s.fail(fmt.Errorf("listing incidents: %w", err))
	}
	for _, d := range sortedKeys(cands) {
		sub, err := s.api.Subject(ctx, topology.KindDevice, d)
		if err != nil || sub.State == nil || sub.State.Quarantine == nil || sub.State.Quarantine.Since.Before(since) {
			continue
		}
		q := sub.State.Quarantine
		rep.Quarantines = append(rep.Quarantines, QuarantineRef{Device: d, Since: q.Since, By: q.By, Reason: q.Reason, Scenario: targets[d]})
		if targets[d] == "" {
			rep.UnexpectedQuarantines++
		}
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// traffic counts the benign fleet's requests per class.
type traffic struct {
	mu      sync.Mutex
	classes map[string]*classCount
	logged  atomic.Uint64
	alsLost atomic.Uint64
}

type classCount struct {
	sent, checked, allowed, denied, local, limited, errors uint64
	reasons                                                map[string]uint64
}

func newTraffic() *traffic { return &traffic{classes: map[string]*classCount{}} }

const maxReasons = 16

func (t *traffic) count(class string, o *outcome) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.classes[class]
	if c == nil {
		c = &classCount{reasons: map[string]uint64{}}
		t.classes[class] = c
	}
	c.sent++
	switch {
	case o.err != nil:
		c.errors++
		return
	case o.local != "":
		c.local++
		if o.local == localRateLimit {
			c.limited++
		}
		return
	}
	c.checked++
	if o.allowed {
		c.allowed++
		return
	}
	c.denied++
	if o.status == 429 {
		c.limited++
	}
	reason := shortReason(o.reason)
	if _, ok := c.reasons[reason]; !ok && len(c.reasons) >= maxReasons {
		reason = "(other reasons)"
	}
	c.reasons[reason]++
}

// shortReason keeps a deny reason's gist: the part before its first
// colon, without the subject's SPIFFE ID.
func shortReason(r string) string {
	if i := strings.Index(r, ": "); i > 0 {
		r = r[:i]
	}
	if strings.HasPrefix(r, "spiffe://") {
		if i := strings.IndexByte(r, ' '); i > 0 {
			r = "subject" + r[i:]
		}
	}
	if len(r) > 120 {
		r = r[:120]
	}
	return r
}

func (t *traffic) report(fleet []*Device) ([]ClassTraffic, Counts) {
	devs := map[string]int{}
	for _, d := range fleet {
		devs[d.Class]++
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []ClassTraffic
	var tot Counts
	for _, name := range sortedKeys(devs) {
		ct := ClassTraffic{Class: name, Devices: devs[name], DenyReasons: map[string]uint64{}}
		if c := t.classes[name]; c != nil {
			ct.Counts = Counts{Sent: c.sent, Checked: c.checked, Allowed: c.allowed, Denied: c.denied,
				GatewayDenied: c.local, RateLimited: c.limited, Errors: c.errors}
			for k, v := range c.reasons {
				ct.DenyReasons[k] = v
			}
		}
		tot.Sent += ct.Sent
		tot.Checked += ct.Checked
		tot.Allowed += ct.Allowed
		tot.Denied += ct.Denied
		tot.GatewayDenied += ct.GatewayDenied
		tot.RateLimited += ct.RateLimited
		tot.Errors += ct.Errors
		out = append(out, ct)
	}
	tot.AccessLogs = t.logged.Load()
	tot.AccessLogsLost = t.alsLost.Load()
	return out, tot
}

// errNoTarget says a scenario found no device to attack.
var errNoTarget = errors.New("no suitable device")
