package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/e2e/lincheck"
	"github.com/vigil-iot/vigil/topology"
)

// The soak's settings. The load is paced (a soak measures how the cluster
// copes with faults, not how it copes with two saturated cores), and every
// wait is bounded.
const (
	soakFaultEvery   = 10 * time.Second // one fault starts every 10 s
	soakRecoverBound = 60 * time.Second // the cluster must agree on a leader again within this after a heal
	soakSampleEvery  = 30 * time.Second // resource samples
	soakWarmup       = 10 * time.Second // fault-free, for comparison
	soakSettle       = 5 * time.Second  // at least, after the last fault, before the load stops

	soakLinDevices = 16 // devices the linearizability workload writes (spread: porcupine checks each device's history alone)
	soakChkDevices = 33 // devices the Check clients ask about
	soakSentinel   = "sentinel"

	soakLinClients        = 6 // two per member
	soakOpPace            = 20 * time.Millisecond
	soakOpBackoffMax      = 500 * time.Millisecond
	soakCheckersPerMember = 2
	soakCheckPace         = 10 * time.Millisecond
	soakCheckTimeout      = 2 * time.Second
	soakSentinelEvery     = 10 // one Check in 10 asks about the sentinel
)

// The resource bounds: a continuous series (one process of a member) fails
// if its last sample exceeds the first by more than these.
const (
	soakFDFactor, soakFDSlack = 3, 200 // fds: beyond both 3× and +200
	soakGRFactor, soakGRSlack = 3, 500 // goroutines: beyond both 3× and +500
	soakRSSFactor             = 3      // RSS: beyond 3×
)

// TestSoak is the bounded soak (issue "Reliability under faults", item 5):
// VIGIL_SOAK=20m (any Go duration) runs it; `make soak` does, with the
// report on stdout. Three members behind a FaultNet serve a 50-device city
// while the linearizability workload (writes and min_revision reads through
// every member, see TestLinearizableUnderFaults) and ext_authz Checks
// against every member run continuously, and a random fault starts every
// 10 s: the leader or a follower isolated, a one-way cut, a slow and lossy
// link, a pair's connections reset, a member SIGSTOPped, a member
// SIGKILLed and restarted; each lasts 2-5 s, only one at a time, and the
// next waits until every member follows one leader again (at most 60 s,
// else the soak fails). Resources (RSS, file descriptors, goroutines) are
// sampled every 30 s. At the end the cluster must converge, the history
// must be linearizable (porcupine), no member may ever have allowed the
// sentinel (a device quarantined, acknowledged and applied everywhere
// before the load starts, never released), and no process may have grown
// beyond the bounds above. The report goes to stdout and to
// e2e/artifacts/soak/report.txt.
func TestSoak(t *testing.T) {
	env := os.Getenv("VIGIL_SOAK")
	if env == "" {
		t.Skip("the soak runs only with VIGIL_SOAK set to its length (VIGIL_SOAK=20m, or `make soak`)")
	}
	duration, err := time.ParseDuration(env)
	if err != nil || duration < 30*time.Second {
		t.Fatalf("VIGIL_SOAK=%q: want a Go duration of at least 30s (%v)", env, err)
	}
	if dl, ok := t.Deadline(); ok && time.Until(dl) < duration+8*time.Minute {
		t.Fatalf("the test binary's -timeout leaves %v; the soak needs its length (%v) plus about 10 minutes: use -timeout %s15m",
			time.Until(dl).Round(time.Second), duration, env)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("VIGIL_SOAK_SEED"); s != "" {
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("VIGIL_SOAK_SEED=%q: %v", s, err)
		}
	}
	began := time.Now()

	fn := harness.NewFaultNet()
	t.Cleanup(func() { fn.Close() })
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 3, Faults: fn, Timeout: soakRecoverBound})
	t.Cleanup(func() { // a soak that fails during a pause must not leave a stopped member behind
		for i := range c.Size() {
			if c.Paused(i) {
				c.Resume(i)
			}
		}
	})

	// The city, and the sentinel quarantined and applied everywhere.
	doc := soakDoc()
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	docRev, err := c.Client(0).ApplyTopology(ctxFor(t, 30*time.Second), data)
	if err != nil {
		t.Fatalf("apply the %d-device document: %v", len(doc.Devices), err)
	}
	checkDocument(t, c, []int{0, 1, 2}, docRev, docRev, len(doc.Devices))
	if t.Failed() {
		t.FailNow()
	}
	ix, err := topology.NewIndex(doc)
	if err != nil {
		t.Fatal(err)
	}
	spiffe := func(dev string) string {
		id, ok := ix.SPIFFEID(topology.DeviceSubject(dev))
		if !ok {
			t.Fatalf("no SPIFFE ID for %s", dev)
		}
		return id
	}
	var linDevs, chkIDs []string
	for _, d := range doc.Devices {
		switch {
		case strings.HasPrefix(d.Name, "lin-"):
			linDevs = append(linDevs, d.Name)
		case strings.HasPrefix(d.Name, "chk-"):
			chkIDs = append(chkIDs, spiffe(d.Name))
		}
	}
	sentinelID := spiffe(soakSentinel)

	conns := make([]authv3.AuthorizationClient, c.Size())
	for i := range conns {
		cc, err := grpc.NewClient(c.Member(i).AuthzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			// Reconnect to a restarted member within 250 ms, not after
			// gRPC's default backoff of up to two minutes: the soak
			// measures the member, not its client's backoff.
			grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: time.Second,
				Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 250 * time.Millisecond}}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		conns[i] = authv3.NewAuthorizationClient(cc)
	}
	q, err := c.Client(0).Quarantine(ctxFor(t, 15*time.Second), topology.KindDevice, soakSentinel, "soak: quarantined for the whole run, never released")
	if err != nil {
		t.Fatalf("quarantine the sentinel: %v", err)
	}
	for i := range c.Size() {
		cl := c.Client(i)
		cl.MinRevision = q.Revision
		if s, err := cl.Subject(ctxFor(t, 15*time.Second), topology.KindDevice, soakSentinel); err != nil || !s.Quarantined {
			t.Fatalf("%s at revision >= %d: %+v, %v; want the sentinel quarantined", c.Member(i).ID, q.Revision, s, err)
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			resp, err := conns[i].Check(ctxFor(t, 2*time.Second), soakCheckReq(sentinelID, true))
			if err == nil && codes.Code(resp.GetStatus().GetCode()) != codes.OK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not deny the quarantined sentinel 10s after applying its quarantine: %v, %v", c.Member(i).ID, resp.GetStatus(), err)
			}
		}
	}

	// The load.
	rec := lincheck.NewRecorder()
	s := &soakRun{t: t, c: c, fn: fn, rec: rec, rng: rand.New(rand.NewPCG(seed, seed^0x5eed)),
		errs:   &linErrors{byKind: map[string]int{}, sample: map[string]string{}},
		checks: newSoakChecks(c.Size()), res: &soakResources{series: make([][]*soakSeries, c.Size())},
		outOfContact: make([][]linWindow, c.Size())}
	ctx, stopLoad := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stopLoad()
			wg.Wait()
		}
	}
	defer stop()
	for id := range soakLinClients {
		wg.Go(func() { s.linClient(ctx, id, linDevs) })
	}
	for m := range c.Size() {
		for k := range soakCheckersPerMember {
			wg.Go(func() { s.checker(ctx, m, conns[m], seed+uint64(100*m+k), chkIDs, sentinelID) })
		}
	}
	wg.Go(func() { s.sampler(ctx) })

	loadStart := rec.Now()
	t.Logf("soak: %v of load with a fault every %v (seed %d; VIGIL_SOAK_SEED=%d repeats the schedule)", duration, soakFaultEvery, seed, seed)
	time.Sleep(soakWarmup)
	s.warmup = linWindow{loadStart, rec.Now()}
	s.schedule(loadStart, duration)
	// The load runs its full length, and a while after the last heal.
	if rest := time.Duration(max(loadStart+int64(duration), s.lastRecovered+int64(soakSettle)) - rec.Now()); s.failure == "" && rest > 0 {
		time.Sleep(rest)
	}
	stop()
	loadEnd := rec.Now()
	s.res.sampleAll(s) // the members as the load left them

	// Every member at the same revision.
	s.finalConverge = s.converge(rec.Oracle(), true)

	// The history.
	ops := rec.Operations()
	st := rec.Stats()
	checkTimeout := min(time.Minute+time.Duration(len(ops))*time.Second/2000, 8*time.Minute)
	t.Logf("soak: checking %d operations with porcupine (timeout %v)", len(ops), checkTimeout)
	checkStart := time.Now()
	res, info := lincheck.Check(ops, checkTimeout)
	lin := soakLin{result: res, took: time.Since(checkStart), timeout: checkTimeout, ops: len(ops)}
	if res != porcupine.Ok {
		lin.visual = filepath.Join(artifactDir(t, "soak"), fmt.Sprintf("history-%s.html", time.Now().Format("20060102-150405")))
		if err := rec.Visualize(info, lin.visual); err != nil {
			t.Errorf("write the visualisation: %v", err)
		}
		if res == porcupine.Illegal {
			lin.explain = lincheck.Explain(ops)
		}
	}

	report, verdict := s.report(soakSummary{began: began, duration: duration, seed: seed, load: linWindow{loadStart, loadEnd},
		ops: ops, stats: st, lin: lin, devices: len(doc.Devices)})
	fmt.Print("\n" + report)
	path := filepath.Join(artifactDir(t, "soak"), "report.txt")
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		t.Errorf("write the report: %v", err)
	} else {
		t.Logf("soak: report written to %s", path)
	}
	for _, v := range verdict {
		t.Error(v)
	}
}

// soakDoc is the soak's city: street lights in two zones, with an
// essential telemetry flow and a non-essential firmware flow. Devices
// lin-* carry the linearizability workload, chk-* the Checks; the
// sentinel stays quarantined throughout.
func soakDoc() *topology.Document {
	doc := &topology.Document{
		APIVersion: topology.APIVersion, TrustDomain: "city.example",
		Zones:         []topology.Zone{{Name: "north"}, {Name: "south"}, {Name: "cloud"}},
		Gateways:      []topology.Gateway{{Name: "gw-north", Zone: "north"}, {Name: "gw-south", Zone: "south"}},
		DeviceClasses: []topology.DeviceClass{{Name: "streetlight"}},
		Services: []topology.Service{
			{Name: "telemetry", Zone: "cloud", Protocol: "http", Hosts: []string{"telemetry.city.example"}, Endpoints: []string{"127.0.0.1:8443"}},
			{Name: "firmware", Zone: "cloud", Protocol: "http", Hosts: []string{"firmware.city.example"}, Endpoints: []string{"127.0.0.1:8444"}},
		},
		Flows: []topology.Flow{
			{Name: "lights-telemetry", Essential: true, From: topology.Selector{Classes: []string{"streetlight"}}, To: topology.Selector{Service: "telemetry"},
				HTTP: &topology.HTTPMatch{Methods: []string{"POST"}, Paths: []string{"/api/v1/telemetry"}}},
			{Name: "lights-firmware", From: topology.Selector{Classes: []string{"streetlight"}}, To: topology.Selector{Service: "firmware"},
				HTTP: &topology.HTTPMatch{Methods: []string{"GET"}, Paths: []string{"/firmware/*"}}},
		},
	}
	var names []string
	for i := range soakLinDevices {
		names = append(names, fmt.Sprintf("lin-%02d", i))
	}
	for i := range soakChkDevices {
		names = append(names, fmt.Sprintf("chk-%02d", i))
	}
	names = append(names, soakSentinel)
	for i, name := range names {
		doc.Devices = append(doc.Devices, topology.Device{Name: name, Class: "streetlight", Gateway: doc.Gateways[i%2].Name})
	}
	return doc
}

// soakCheckReq asks whether a street light may use the essential
// telemetry flow or the non-essential firmware flow.
func soakCheckReq(spiffeID string, essential bool) *authv3.CheckRequest {
	h := &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/firmware/a.bin", Host: "firmware.city.example"}
	if essential {
		h = &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/api/v1/telemetry", Host: "telemetry.city.example"}
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:  &authv3.AttributeContext_Peer{Principal: spiffeID},
		Request: &authv3.AttributeContext_Request{Http: h},
	}}
}

// soakRun is one soak's state.
type soakRun struct {
	t      *testing.T
	c      *harness.Cluster
	fn     *harness.FaultNet
	rec    *lincheck.Recorder
	rng    *rand.Rand // the schedule's; only its goroutine uses it
	errs   *linErrors
	checks *soakChecks
	res    *soakResources
	warmup linWindow

	mu           sync.Mutex
	outOfContact [][]linWindow // per member: killed (until restarted and healthy) or paused; end 0 while it lasts
	faults       []soakFault

	failure       string // why the schedule stopped early, "" if it ran to the end
	lastRecovered int64
	lastConverge  soakConvergence
	finalConverge soakConvergence
}

// soakFault is one fault as it ran, on the recorder's clock.
type soakFault struct {
	kind, detail string
	win          linWindow // injected to healed (for a kill: until the restarted member is healthy)
	recovered    int64     // every member followed one leader again; 0 if never
}

// linClient is TestLinearizableUnderFaults' client loop (the same
// operations in the same mix, through linDo), paced, with an exponential
// backoff after errors (100 ms to 500 ms) so that a dead member does not
// fill the history with indeterminate writes.
func (s *soakRun) linClient(ctx context.Context, id int, devices []string) {
	rng := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	m := id % s.c.Size()
	var backoff time.Duration
	for seq := 0; ctx.Err() == nil; seq++ {
		in := lincheck.Input{Device: devices[rng.IntN(len(devices))]}
		switch r := rng.IntN(20); {
		case r < 4:
			in.Kind, in.Reason = lincheck.Quarantine, fmt.Sprintf("soak-c%d-%d", id, seq)
		case r < 6:
			in.Kind = lincheck.Release
		case r < 10:
			in.Kind, in.Risk = lincheck.SetRisk, id*100_000_000+seq
		default:
			in.Kind = lincheck.Read
		}
		// Not derived from ctx: an operation under way when the load stops
		// finishes (bounded) rather than becoming indeterminate.
		opCtx, cancel := context.WithTimeout(context.Background(), linOpTimeout)
		err := linDo(opCtx, s.c.Client(m), s.rec.Begin(id, s.c.Member(m).ID, in))
		cancel()
		wait := soakOpPace
		if err != nil {
			s.errs.add(in.Kind, err)
			backoff = min(max(2*backoff, 100*time.Millisecond), soakOpBackoffMax)
			wait = backoff
		} else {
			backoff = 0
		}
		soakSleep(ctx, wait)
	}
}

func soakSleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// soakChecks counts the Check clients' answers.
type soakChecks struct {
	allowed, denied, errors []atomic.Int64 // per member
	sentinelDenied          atomic.Int64

	mu       sync.Mutex
	answered [][]int64 // per member: when each Check was answered (allowed or denied)
	errKinds map[string]int
	failOpen []string
}

func newSoakChecks(n int) *soakChecks {
	return &soakChecks{allowed: make([]atomic.Int64, n), denied: make([]atomic.Int64, n), errors: make([]atomic.Int64, n),
		answered: make([][]int64, n), errKinds: map[string]int{}}
}

// checker asks member m about random chk-* devices and, one time in
// soakSentinelEvery, about the sentinel, until ctx ends.
func (s *soakRun) checker(ctx context.Context, m int, ac authv3.AuthorizationClient, seed uint64, ids []string, sentinelID string) {
	rng := rand.New(rand.NewPCG(seed, uint64(time.Now().UnixNano())))
	ch := s.checks
	for ctx.Err() == nil {
		sentinel := rng.IntN(soakSentinelEvery) == 0
		id := ids[rng.IntN(len(ids))]
		if sentinel {
			id = sentinelID
		}
		essential := rng.IntN(2) == 0
		cctx, cancel := context.WithTimeout(context.Background(), soakCheckTimeout)
		resp, err := ac.Check(cctx, soakCheckReq(id, essential))
		cancel()
		at := s.rec.Now()
		wait := soakCheckPace
		if err != nil {
			ch.errors[m].Add(1)
			ch.mu.Lock()
			ch.errKinds[fmt.Sprintf("%s: %s", s.c.Member(m).ID, status.Code(err))]++
			ch.mu.Unlock()
			wait = 100 * time.Millisecond
		} else {
			code := codes.Code(resp.GetStatus().GetCode())
			ch.mu.Lock()
			ch.answered[m] = append(ch.answered[m], at)
			if sentinel && code == codes.OK {
				ch.failOpen = append(ch.failOpen, fmt.Sprintf("%s allowed the quarantined sentinel (%s flow) at %s; faults then: %s",
					s.c.Member(m).ID, map[bool]string{true: "essential", false: "non-essential"}[essential], linRel(at), s.activeFault(at)))
			}
			ch.mu.Unlock()
			switch {
			case code == codes.OK:
				ch.allowed[m].Add(1)
			case sentinel:
				ch.denied[m].Add(1)
				ch.sentinelDenied.Add(1)
			default:
				ch.denied[m].Add(1)
			}
		}
		soakSleep(ctx, wait)
	}
}

// activeFault describes the fault in force at (or the last one before) at.
func (s *soakRun) activeFault(at int64) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.faults) - 1; i >= 0; i-- {
		f := s.faults[i]
		if f.win.start <= at && (f.win.end == 0 || at <= f.win.end) {
			return f.kind + ": " + f.detail
		}
		if f.win.start <= at {
			return fmt.Sprintf("none (the last, %s, healed at %s)", f.kind, linRel(f.win.end))
		}
	}
	return "none yet"
}

// soakFaultKinds are the faults, drawn with equal odds.
var soakFaultKinds = []string{"leader isolated", "follower isolated", "one-way cut", "slow lossy link", "pair reset", "member paused", "member killed"}

// schedule injects a random fault every soakFaultEvery until the load has
// run for duration, each healed after 2-5 s (a pause 2-4 s), waiting after
// each until every member follows one leader again. A cluster that does
// not recover within soakRecoverBound fails the soak and ends the schedule.
func (s *soakRun) schedule(loadStart int64, duration time.Duration) {
	end := loadStart + int64(duration)
	next := s.rec.Now()
	stopEarly := func(format string, args ...any) {
		s.failure = fmt.Sprintf(format, args...)
		s.t.Logf("soak: %s", s.failure)
	}
	for {
		if wait := next - s.rec.Now(); wait > 0 {
			time.Sleep(time.Duration(wait))
		}
		if s.rec.Now() >= end {
			return
		}
		leader, err := s.c.Leader()
		if err != nil {
			stopEarly("no agreed leader before fault %d: %v", len(s.faults)+1, err)
			return
		}
		at := s.rec.Now()
		next = at + int64(soakFaultEvery)
		kind := soakFaultKinds[s.rng.IntN(len(soakFaultKinds))]
		detail, hold, heal, err := s.inject(kind, leader)
		if err != nil {
			stopEarly("inject %q: %v", kind, err)
			return
		}
		s.mu.Lock()
		s.faults = append(s.faults, soakFault{kind: kind, detail: detail, win: linWindow{start: at}})
		idx := len(s.faults) - 1
		s.mu.Unlock()
		time.Sleep(hold)
		healErr := heal()
		healed := s.rec.Now()
		oracle := s.rec.Oracle()
		s.mu.Lock()
		s.faults[idx].win.end = healed
		s.mu.Unlock()
		s.rec.Annotate("faults", at, healed, kind+": "+detail)
		if healErr != nil {
			stopEarly("heal fault %d (%s: %s): %v", idx+1, kind, detail, healErr)
			return
		}
		// Every member follows one leader again (bounded by the harness's
		// Timeout, soakRecoverBound).
		l, err := s.c.Leader()
		if err != nil {
			stopEarly("the cluster did not recover within %v of healing fault %d (%s: %s): %v",
				soakRecoverBound, idx+1, kind, detail, err)
			return
		}
		recovered := s.rec.Now()
		s.lastRecovered = recovered
		s.mu.Lock()
		s.faults[idx].recovered = recovered
		s.mu.Unlock()
		s.t.Logf("soak: fault %d at %s: %s: %s; healed after %v; %s leads, all agree %v after the heal",
			idx+1, linRel(at), kind, detail, linDur(healed-at), s.c.Member(l).ID, linDur(recovered-healed))
		if max(next, recovered) >= end {
			// The last fault: how long after its heal every member had
			// applied every write acknowledged before it (polled from now).
			s.lastConverge = s.converge(oracle, false)
			s.lastConverge.from = healed
			return
		}
	}
}

// inject starts a fault of the given kind and returns its description, how
// long to leave it (2-5 s; a pause 2-4 s) and what heals it.
func (s *soakRun) inject(kind string, leader int) (string, time.Duration, func() error, error) {
	c, fn := s.c, s.fn
	n := c.Size()
	id := func(i int) string { return c.Member(i).ID }
	hold := 2*time.Second + time.Duration(s.rng.Int64N(int64(3*time.Second)))
	held := func() string { return linDur(int64(hold)).String() }
	l := leader
	f1, f2 := (l+1)%n, (l+2)%n
	if s.rng.IntN(2) == 0 {
		f1, f2 = f2, f1
	}
	healAll := func() error { fn.HealAll(); return nil }
	a := s.rng.IntN(n) // a random member, and another
	b := (a + 1 + s.rng.IntN(n-1)) % n
	role := "follower"
	if a == l {
		role = "leader"
	}
	switch kind {
	case "leader isolated":
		fn.Isolate(id(l), id(f1), id(f2))
		return fmt.Sprintf("leader %s cut off from %s and %s both ways for %s", id(l), id(f1), id(f2), held()), hold, healAll, nil
	case "follower isolated":
		fn.Isolate(id(f1), id(l), id(f2))
		return fmt.Sprintf("follower %s cut off from %s (leader) and %s both ways for %s", id(f1), id(l), id(f2), held()), hold, healAll, nil
	case "one-way cut":
		fn.Cut(id(a), id(b))
		return fmt.Sprintf("%s -> %s cut, %s -> %s intact, for %s (leader %s)", id(a), id(b), id(b), id(a), held(), id(l)), hold, healAll, nil
	case "slow lossy link":
		d := time.Duration(100+s.rng.IntN(201)) * time.Millisecond
		p := 0.02 + 0.08*s.rng.Float64()
		fn.Delay(id(a), id(b), d)
		fn.Drop(id(b), id(a), p)
		return fmt.Sprintf("%s -> %s delayed %v, %s -> %s drops %.0f%% of chunks, for %s (leader %s)",
			id(a), id(b), d, id(b), id(a), 100*p, held(), id(l)), hold, healAll, nil
	case "pair reset":
		done, finished := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(finished)
			tick := time.NewTicker(500 * time.Millisecond)
			defer tick.Stop()
			for {
				fn.Reset(id(a), id(b))
				select {
				case <-done:
					return
				case <-tick.C:
				}
			}
		}()
		return fmt.Sprintf("every connection between %s and %s reset (RST to both ends) every 500ms for %s (leader %s)", id(a), id(b), held(), id(l)),
			hold, func() error { close(done); <-finished; return nil }, nil
	case "member paused":
		hold = 2*time.Second + hold%(2*time.Second) // 2-4 s
		if err := c.Pause(a); err != nil {
			return "", 0, nil, err
		}
		w := s.outOfContactBegin(a)
		return fmt.Sprintf("SIGSTOP %s (%s), SIGCONT after %s", id(a), role, held()), hold, func() error {
			err := c.Resume(a)
			s.outOfContactEnd(a, w)
			return err
		}, nil
	case "member killed":
		if err := c.Kill(a); err != nil {
			return "", 0, nil, err
		}
		w := s.outOfContactBegin(a)
		return fmt.Sprintf("SIGKILL %s (%s), restarted after %s", id(a), role, held()), hold, func() error {
			err := c.Restart(a) // waits for its /healthz
			s.outOfContactEnd(a, w)
			return err
		}, nil
	}
	return "", 0, nil, fmt.Errorf("unknown fault kind %q", kind)
}

func (s *soakRun) outOfContactBegin(m int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outOfContact[m] = append(s.outOfContact[m], linWindow{start: s.rec.Now()})
	return len(s.outOfContact[m]) - 1
}

func (s *soakRun) outOfContactEnd(m, w int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outOfContact[m][w].end = s.rec.Now()
}

// soakConvergence is how long the members took to reach a revision.
type soakConvergence struct {
	from, at int64 // the recorder's clock: measured from, reached
	target   uint64
	revs     []uint64 // each member's revision when reached
	equal    bool     // all at the same revision
	err      error
}

// converge waits (up to soakRecoverBound) until every member has applied
// target; with equal, until moreover they all report the same revision.
func (s *soakRun) converge(target uint64, equal bool) soakConvergence {
	cv := soakConvergence{from: s.rec.Now(), target: target}
	deadline := time.Now().Add(soakRecoverBound)
	var last string
	for {
		revs := make([]uint64, s.c.Size())
		errs := make([]error, s.c.Size())
		var wg sync.WaitGroup
		for i := range s.c.Size() {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				st, err := s.c.Client(i).Self(ctx)
				if err != nil {
					errs[i] = err
					return
				}
				revs[i] = uint64(st.Revision)
			})
		}
		wg.Wait()
		ok := true
		var parts []string
		for i := range revs {
			if errs[i] != nil {
				ok = false
				parts = append(parts, fmt.Sprintf("%s: %v", s.c.Member(i).ID, errs[i]))
				continue
			}
			parts = append(parts, fmt.Sprintf("%s at %d", s.c.Member(i).ID, revs[i]))
			if revs[i] < target || equal && revs[i] != revs[0] {
				ok = false
			}
		}
		last = strings.Join(parts, ", ")
		if ok {
			cv.at, cv.revs = s.rec.Now(), revs
			cv.equal = !slices.ContainsFunc(revs, func(r uint64) bool { return r != revs[0] })
			return cv
		}
		if time.Now().After(deadline) {
			what := "applied revision %d"
			if equal {
				what = "reached one revision, at least %d"
			}
			cv.err = fmt.Errorf("the members had not "+what+" after %v: %s", target, soakRecoverBound, last)
			return cv
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// soakResources holds the resource samples: per member, a series per
// process (a restart starts a new one).
type soakResources struct {
	mu     sync.Mutex
	series [][]*soakSeries
}

type soakSeries struct {
	pid     int
	samples []soakSample
}

type soakSample struct {
	at         int64
	rssKB      int64 // VmRSS
	anonKB     int64 // RssAnon: VmRSS without the mapped files (bolt's)
	fds        int64
	goroutines int64 // -1: /metrics did not answer (a paused member)
}

// sampler samples every member once the fault-free warm-up is over (so
// that the first sample is of warm processes) and then every
// soakSampleEvery until ctx ends.
func (s *soakRun) sampler(ctx context.Context) {
	soakSleep(ctx, soakWarmup)
	tick := time.NewTicker(soakSampleEvery)
	defer tick.Stop()
	for ctx.Err() == nil {
		s.res.sampleAll(s)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (r *soakResources) sampleAll(s *soakRun) {
	for i := range s.c.Size() {
		pid := s.c.PID(i)
		if pid == 0 {
			continue // killed
		}
		smp, err := soakSampleProc(pid, s.c.Member(i).APIAddr)
		if err != nil {
			continue // it died while sampled
		}
		smp.at = s.rec.Now()
		r.mu.Lock()
		ss := r.series[i]
		if len(ss) == 0 || ss[len(ss)-1].pid != pid {
			ss = append(ss, &soakSeries{pid: pid})
			r.series[i] = ss
		}
		ss[len(ss)-1].samples = append(ss[len(ss)-1].samples, smp)
		r.mu.Unlock()
	}
}

var soakMetricsClient = &http.Client{Timeout: 2 * time.Second}

// soakSampleProc reads a process's VmRSS and open file descriptors from
// /proc and its go_goroutines from the member's GET /metrics.
func soakSampleProc(pid int, apiAddr string) (soakSample, error) {
	smp := soakSample{goroutines: -1}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return smp, err
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		kb := func(v string) int64 {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			smp.rssKB = kb(v)
		}
		if v, ok := strings.CutPrefix(sc.Text(), "RssAnon:"); ok {
			smp.anonKB = kb(v)
		}
	}
	f.Close()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return smp, err
	}
	smp.fds = int64(len(fds))
	resp, err := soakMetricsClient.Get("http://" + apiAddr + "/metrics")
	if err == nil {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
				if g, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					smp.goroutines = int64(g)
				}
			}
		}
		resp.Body.Close()
	}
	return smp, nil
}

// soakLin is the linearizability check's outcome.
type soakLin struct {
	result        porcupine.CheckResult
	took, timeout time.Duration
	ops           int
	visual        string
	explain       string
}

type soakSummary struct {
	began    time.Time
	duration time.Duration
	seed     uint64
	load     linWindow
	ops      []porcupine.Operation
	stats    lincheck.Stats
	lin      soakLin
	devices  int
}

// soakGapIn is the longest span of w without a Check answer from a member,
// leaving out the times it was out of contact (out): each stretch of w in
// contact is measured alone, its ends counting as answers.
func soakGapIn(answered []int64, w linWindow, out []linWindow) linGap {
	segs := []linWindow{w}
	for _, o := range out {
		oe := o.end
		if oe == 0 {
			oe = w.end
		}
		var next []linWindow
		for _, sg := range segs {
			if oe <= sg.start || o.start >= sg.end {
				next = append(next, sg)
				continue
			}
			if o.start > sg.start {
				next = append(next, linWindow{sg.start, o.start})
			}
			if oe < sg.end {
				next = append(next, linWindow{oe, sg.end})
			}
		}
		segs = next
	}
	var best linGap
	for _, sg := range segs {
		g := linLongestGap(answered, sg)
		best.n += g.n
		if g.gap > best.gap {
			best.gap, best.from = g.gap, g.from
		}
	}
	return best
}

// report renders the soak's report and lists what failed it.
func (s *soakRun) report(sum soakSummary) (string, []string) {
	var b strings.Builder
	var fail []string
	pf := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	s.mu.Lock()
	faults := slices.Clone(s.faults)
	out := make([][]linWindow, len(s.outOfContact))
	for i := range out {
		out[i] = slices.Clone(s.outOfContact[i])
	}
	s.mu.Unlock()
	s.checks.mu.Lock()
	answered := make([][]int64, len(s.checks.answered))
	for i := range answered {
		answered[i] = slices.Clone(s.checks.answered[i])
		slices.Sort(answered[i])
	}
	failOpen := slices.Clone(s.checks.failOpen)
	errKinds := maps2sorted(s.checks.errKinds)
	s.checks.mu.Unlock()
	loadDur := sum.load.end - sum.load.start
	n := s.c.Size()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = s.c.Member(i).ID
	}

	pf("==================== VIGIL SOAK REPORT ====================\n")
	pf("started %s; load ran %v (asked %v); whole test %v; seed %d (VIGIL_SOAK_SEED repeats the fault schedule)\n",
		sum.began.UTC().Format(time.RFC3339), linDur(loadDur), sum.duration, time.Since(sum.began).Round(time.Second), sum.seed)
	pf("times like +1m2.345s are on the history's clock (porcupine's too); the load ran from %s to %s on it\n", linRel(sum.load.start), linRel(sum.load.end))
	pf("cluster: %d members (%s) whose raft and API traffic to each other crosses a FaultNet; %d devices in 2 zones,\n", n, strings.Join(ids, " "), sum.devices)
	pf("  flows lights-telemetry (essential) and lights-firmware; %d devices written by the linearizability workload, %d asked about by Checks,\n", soakLinDevices, soakChkDevices)
	pf("  1 sentinel quarantined (acknowledged and applied everywhere) before the load, never released\n")
	pf("load: %d linearizability clients (2 per member, %v apart, %v per operation, backoff up to %v after errors);\n",
		soakLinClients, soakOpPace, linOpTimeout, soakOpBackoffMax)
	pf("  %d Check clients (%d per member, %v apart, %v per Check, 1 in %d about the sentinel)\n",
		n*soakCheckersPerMember, soakCheckersPerMember, soakCheckPace, soakCheckTimeout, soakSentinelEvery)
	if s.failure != "" {
		pf("THE SCHEDULE STOPPED EARLY: %s\n", s.failure)
		fail = append(fail, "the fault schedule stopped early: "+s.failure)
	}

	// Operations.
	st := sum.stats
	pf("\n--- operations (linearizability workload) ---\n")
	pf("  %-11s %10s %14s\n", "kind", "acked", "indeterminate")
	for _, k := range lincheck.Kinds {
		if k == lincheck.Read {
			continue
		}
		pf("  %-11s %10d %14d\n", k, st.Acknowledged[k], st.Indeterminate[k])
	}
	pf("  %-11s %10d %14d\n", "writes", st.AcknowledgedWrites(), st.IndeterminateWrites())
	pf("  reads: %d returned, %d failed (left out of the history)\n", st.Reads, st.ReadsFailed)
	total := st.AcknowledgedWrites() + st.IndeterminateWrites() + st.Reads + st.ReadsFailed
	pf("  total %d operations, %.0f/s\n", total, float64(total)/(float64(loadDur)/1e9))
	s.errs.mu.Lock()
	for _, kv := range maps2sorted(s.errs.byKind) {
		msg := s.errs.sample[kv.k]
		if len(msg) > 160 {
			msg = msg[:160] + "…"
		}
		pf("  error %-42s %6d  e.g. %s\n", kv.k, kv.v, msg)
	}
	definite := s.errs.definite
	s.errs.mu.Unlock()
	if definite > 0 {
		fail = append(fail, fmt.Sprintf("%d operations were refused outright (4xx); a correct client gets none", definite))
	}
	if st.AcknowledgedWrites() < 100 || st.Reads < 100 {
		fail = append(fail, fmt.Sprintf("too little load to mean anything: %d acknowledged writes, %d reads", st.AcknowledgedWrites(), st.Reads))
	}

	// Checks.
	pf("\n--- ext_authz Checks ---\n")
	pf("  %-6s %10s %10s %8s   %s\n", "member", "allowed", "denied", "errors", "longest gap between answers while in contact (whole load)")
	var ta, td, te int64
	for i := range n {
		a, d, e := s.checks.allowed[i].Load(), s.checks.denied[i].Load(), s.checks.errors[i].Load()
		ta, td, te = ta+a, td+d, te+e
		g := soakGapIn(answered[i], sum.load, out[i])
		pf("  %-6s %10d %10d %8d   %v at %s\n", ids[i], a, d, e, linDur(g.gap), linRel(g.from))
	}
	pf("  %-6s %10d %10d %8d   (%.0f Checks/s)\n", "total", ta, td, te, float64(ta+td+te)/(float64(loadDur)/1e9))
	for _, kv := range errKinds {
		pf("  error %-30s %6d\n", kv.k, kv.v)
	}
	pf("  sentinel: %d answers, %d denied, %d ALLOWED\n", s.checks.sentinelDenied.Load()+int64(len(failOpen)), s.checks.sentinelDenied.Load(), len(failOpen))
	if len(failOpen) > 0 {
		for i, f := range failOpen {
			if i == 10 {
				pf("    … and %d more\n", len(failOpen)-10)
				break
			}
			pf("    FAIL-OPEN: %s\n", f)
		}
		fail = append(fail, fmt.Sprintf("fail-open: members allowed the quarantined sentinel %d times, first: %s", len(failOpen), failOpen[0]))
	}
	if ta == 0 || s.checks.sentinelDenied.Load() == 0 {
		fail = append(fail, fmt.Sprintf("too few Checks to mean anything: %d allowed, %d sentinel denials", ta, s.checks.sentinelDenied.Load()))
	}

	// Faults and availability.
	var acks []int64
	for _, op := range sum.ops {
		if in, o := op.Input.(lincheck.Input), op.Output.(lincheck.Output); in.Kind.IsWrite() && !o.Indeterminate {
			acks = append(acks, op.Return)
		}
	}
	slices.Sort(acks)
	checkGap := func(w linWindow) (linGap, string) {
		var best linGap
		who := ""
		for i := range n {
			if g := soakGapIn(answered[i], w, out[i]); g.gap >= best.gap {
				best, who = g, ids[i]
			}
		}
		return best, who
	}
	pf("\n--- faults: %d injected (one every %v at most; each 2-5 s, then healed; the next once every member follows one leader) ---\n", len(faults), soakFaultEvery)
	type agg struct {
		count                                int
		held, during, until, after, chk, rec int64
	}
	byKind := map[string]*agg{}
	for _, k := range soakFaultKinds {
		byKind[k] = &agg{}
	}
	wg := linLongestGap(acks, s.warmup)
	cg, cgWho := checkGap(s.warmup)
	pf("  fault-free start (%v): longest write gap %v, longest Check gap %v (%s)\n", linDur(s.warmup.end-s.warmup.start), linDur(wg.gap), linDur(cg.gap), cgWho)
	var log strings.Builder
	for i, f := range faults {
		a := byKind[f.kind]
		a.count++
		end := f.win.end
		if end == 0 {
			end = sum.load.end
		}
		next := sum.load.end // the fault's period: until the next fault, or the end of the load
		if i+1 < len(faults) {
			next = faults[i+1].win.start
		}
		a.held = max(a.held, end-f.win.start)
		during := linLongestGap(acks, linWindow{f.win.start, end})
		a.during = max(a.during, during.gap)
		rec := "never"
		if f.recovered > 0 {
			until := linLongestGap(acks, linWindow{f.win.start, f.recovered})
			a.until = max(a.until, until.gap)
			a.rec = max(a.rec, f.recovered-end)
			rec = linDur(f.recovered - end).String()
		}
		after := linLongestGap(acks, linWindow{f.win.start, next})
		a.after = max(a.after, after.gap)
		chk, chkWho := checkGap(linWindow{f.win.start, next})
		a.chk = max(a.chk, chk.gap)
		fmt.Fprintf(&log, "  %3d %10s %-18s %s\n        all follow one leader %s after the heal; write gap %v during the fault, %v until the next; Check gap %v (%s)\n",
			i+1, linRel(f.win.start), f.kind, f.detail, rec, linDur(during.gap), linDur(after.gap), linDur(chk.gap), chkWho)
	}
	pf("  %-18s %5s %9s %23s %19s %15s %15s %13s\n", "", "", "", "longest write gap:", "", "", "longest", "longest time")
	pf("  %-18s %5s %9s %13s %13s %15s %15s %13s\n", "kind", "count", "max held", "during fault", "until 1 leader", "until next fault", "Check gap", "to 1 leader")
	for _, k := range soakFaultKinds {
		a := byKind[k]
		if a.count == 0 {
			pf("  %-18s %5d\n", k, 0)
			continue
		}
		pf("  %-18s %5d %9v %13v %13v %15v %15v %13v\n", k, a.count, linDur(a.held), linDur(a.during), linDur(a.until), linDur(a.after), linDur(a.chk), linDur(a.rec))
	}
	whole := linLongestGap(acks, sum.load)
	wcg, wcgWho := checkGap(sum.load)
	pf("  whole load: longest gap between acknowledged writes (through any member) %v at %s; longest Check gap on a member in contact %v (%s) at %s\n",
		linDur(whole.gap), linRel(whole.from), linDur(wcg.gap), wcgWho, linRel(wcg.from))
	pf("  (write gap: the longest time without an acknowledged write through any member, while the fault was in force (a kill: until the\n")
	pf("   restarted member was healthy), until every member followed one leader again, or until the next fault; Check gap: the longest time,\n")
	pf("   from the fault until the next, that a member that was running and not stopped answered no Check, on any member)\n")

	// Linearizability.
	pf("\n--- linearizability ---\n")
	lin := sum.lin
	pf("  porcupine: %s on %d operations in %v (timeout %v)\n", lin.result, lin.ops, lin.took.Round(time.Millisecond), lin.timeout)
	switch lin.result {
	case porcupine.Ok:
	case porcupine.Unknown:
		pf("  the check ran out of time; the history: %s\n", lin.visual)
		fail = append(fail, fmt.Sprintf("the linearizability check did not finish within %v (history in %s)", lin.timeout, lin.visual))
	default:
		pf("  NOT LINEARIZABLE; visualisation: %s\n%s", lin.visual, lin.explain)
		fail = append(fail, fmt.Sprintf("the history is NOT linearizable; visualisation: %s\n%s", lin.visual, lin.explain))
	}

	// Convergence.
	pf("\n--- convergence ---\n")
	if lc := s.lastConverge; lc.from > 0 {
		if lc.err != nil {
			pf("  after the last heal: %v\n", lc.err)
			fail = append(fail, "after the last heal: "+lc.err.Error())
		} else {
			pf("  every member applied every write acknowledged before the last heal (revision %d) %v after it\n", lc.target, linDur(lc.at-lc.from))
		}
	}
	if fc := s.finalConverge; fc.err != nil {
		pf("  after the load stopped: %v\n", fc.err)
		fail = append(fail, "after the load stopped: "+fc.err.Error())
	} else {
		pf("  after the load stopped: every member at revision %d (>= %d, the highest acknowledged) %v later\n", fc.revs[0], fc.target, linDur(fc.at-fc.from))
	}

	// Resources.
	pf("\n--- resources (sampled %v into the load, then every %v, and once the load stopped; a restart starts a new series) ---\n", soakWarmup, soakSampleEvery)
	pf("  bounds, per continuous series, last sample against the first: fds beyond both %d× and +%d, goroutines beyond both %d× and +%d, RSS beyond %d×\n",
		soakFDFactor, soakFDSlack, soakGRFactor, soakGRSlack, soakRSSFactor)
	pf("  (RSS is VmRSS, which counts the pages of mapped files such as the raft log's bolt file; anon is RssAnon, the heap and stacks)\n")
	pf("  %-6s %8s %7s %9s   %-22s %-16s %-14s %-17s %s\n", "member", "pid", "samples", "span", "RSS MiB first/last/max", "anon MiB first/last", "fds f/l/max", "goroutines f/l/max", "verdict")
	s.res.mu.Lock()
	for i := range n {
		for _, ser := range s.res.series[i] {
			sm := ser.samples
			first, last := sm[0], sm[len(sm)-1]
			var maxRSS, maxFD, maxGR int64
			gFirst, gLast := int64(-1), int64(-1)
			for _, x := range sm {
				maxRSS, maxFD, maxGR = max(maxRSS, x.rssKB), max(maxFD, x.fds), max(maxGR, x.goroutines)
				if x.goroutines >= 0 {
					if gFirst < 0 {
						gFirst = x.goroutines
					}
					gLast = x.goroutines
				}
			}
			verdict := "ok"
			var why []string
			if len(sm) >= 2 {
				if last.fds > soakFDFactor*first.fds && last.fds > first.fds+soakFDSlack {
					why = append(why, fmt.Sprintf("fds %d -> %d", first.fds, last.fds))
				}
				if gFirst >= 0 && gLast > soakGRFactor*gFirst && gLast > gFirst+soakGRSlack {
					why = append(why, fmt.Sprintf("goroutines %d -> %d", gFirst, gLast))
				}
				if last.rssKB > soakRSSFactor*first.rssKB {
					why = append(why, fmt.Sprintf("RSS %d kB -> %d kB", first.rssKB, last.rssKB))
				}
			} else {
				verdict = "1 sample"
			}
			if len(why) > 0 {
				verdict = "GREW: " + strings.Join(why, ", ")
				fail = append(fail, fmt.Sprintf("%s (pid %d) grew beyond the bounds over %v: %s", ids[i], ser.pid, linDur(last.at-first.at), strings.Join(why, ", ")))
			}
			pf("  %-6s %8d %7d %9v   %-22s %-16s %-14s %-17s %s\n", ids[i], ser.pid, len(sm), linDur(last.at-first.at),
				fmt.Sprintf("%.1f/%.1f/%.1f", mib(first.rssKB), mib(last.rssKB), mib(maxRSS)),
				fmt.Sprintf("%.1f/%.1f", mib(first.anonKB), mib(last.anonKB)),
				fmt.Sprintf("%d/%d/%d", first.fds, last.fds, maxFD),
				fmt.Sprintf("%s/%s/%s", orNA(gFirst), orNA(gLast), orNA(maxGR)), verdict)
		}
	}
	s.res.mu.Unlock()

	pf("\n--- fault log ---\n%s", log.String())
	if len(fail) == 0 {
		pf("\nVERDICT: PASS\n")
	} else {
		pf("\nVERDICT: FAIL\n")
		for _, f := range fail {
			pf("  - %s\n", f)
		}
	}
	pf("===========================================================\n")
	return b.String(), fail
}

func mib(kb int64) float64 { return float64(kb) / 1024 }

func orNA(v int64) string {
	if v < 0 {
		return "n/a"
	}
	return strconv.FormatInt(v, 10)
}

type soakKV struct {
	k string
	v int
}

func maps2sorted(m map[string]int) []soakKV {
	out := make([]soakKV, 0, len(m))
	for k, v := range m {
		out = append(out, soakKV{k, v})
	}
	slices.SortFunc(out, func(a, b soakKV) int { return strings.Compare(a.k, b.k) })
	return out
}
