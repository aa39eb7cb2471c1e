package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/authz/authztest"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// consoleTarget is the latency target for every console request.
const consoleTarget = 200 * time.Millisecond

// runConsole measures what the web console asks of a member (issue 14):
// the latency of its topology, device-list and search requests at a
// million devices, and what a live decision stream delivers and costs the
// authorizer at 10,000 Checks/s (no stream, one stream at the default rate,
// one at the highest rate, four filtered streams, alternating).
func runConsole(args []string) error {
	fs := flag.NewFlagSet("console", flag.ExitOnError)
	devices := fs.Int("devices", 1_000_000, "devices in the topology")
	zones := fs.Int("zones", 100, "zones")
	gwPerZone := fs.Int("gateways-per-zone", 100, "gateways per zone")
	quarantined := fs.Int("quarantined", 2000, "devices quarantined through POST /v1/state before the requests")
	atRisk := fs.Int("at-risk", 20_000, "devices given a risk score through POST /v1/state before the requests")
	requests := fs.Int("requests", 2000, "requests per kind of console request (a tenth of it for the search that matches every device)")
	clients := fs.Int("clients", 4, "concurrent console API clients")
	kindLimit := fs.Duration("kind-limit", 30*time.Second, "stop a kind of request after this long, even if fewer were sent")
	rate := fs.Int("rate", 10_000, "offered ext_authz Checks/s during the stream phases (0: as fast as -inflight allows)")
	inflight := fs.Int("inflight", 32, "most Checks in flight")
	conns := fs.Int("conns", 4, "gRPC connections the Checks share")
	distinct := fs.Int("distinct", 20_000, "distinct Check requests cycled through (half allowed, half denied)")
	phase := fs.Duration("phase", 10*time.Second, "length of each stream phase")
	rounds := fs.Int("rounds", 2, "rounds of the four stream phases (a b c d a b c d ...)")
	monitorOn := fs.Bool("monitor", false, "run the member with its monitor (off by default: the stream's cost alone)")
	quick := fs.Bool("quick", false, "smoke run: 100,000 devices, 200 requests per kind, 3 s phases, one round (flags given explicitly win)")
	bin, dir, err := setup(fs, args)
	defer os.RemoveAll(dir)
	if err != nil {
		return err
	}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"devices": "100000", "requests": "200", "phase": "3s", "rounds": "1",
			"quarantined": "500", "at-risk": "2000", "kind-limit": "10s"} {
			if !set[name] {
				fs.Set(name, v)
			}
		}
	}
	perZone := *devices / max(*zones, 1)
	nGW := *zones * *gwPerZone
	*quarantined = min(*quarantined, *devices)
	*atRisk = min(*atRisk, *devices)

	// One member, the decision log on (as always), no monitor unless asked:
	// the stream's cost, not the monitor's, is measured.
	serveArgs := []string{"--decision-log", filepath.Join(dir, "decisions.log"), fmt.Sprintf("--monitor=%v", *monitorOn)}
	c, err := startCluster(bin, filepath.Join(dir, "cluster"), harness.Options{Members: 1, Timeout: 5 * time.Minute, Args: serveArgs})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()

	header(fmt.Sprintf("%d devices, %d gateways, %d zones on 1 member", *devices, nGW, *zones))
	// Classes without an attestation requirement (attestations come only
	// from verified evidence, which this tool does not produce) and no rate
	// limits (a benign fleet, as `vigil-load monitor` runs): half of the
	// Checks are allowed by a flow, half denied by none.
	doc := topologytest.Generate(topologytest.Spec{Zones: *zones, GatewaysPerZone: *gwPerZone, Devices: *devices, NoAttestation: true})
	for i := range doc.DeviceClasses {
		doc.DeviceClasses[i].RateLimit = ""
	}
	for i := range doc.Flows {
		doc.Flows[i].RateLimit = ""
	}
	t0 := time.Now()
	ix, err := applyDocument(ctx, c, doc)
	if err != nil {
		return err
	}
	fmt.Printf("apply: %v (the tool's own index and JSON encoding included)\n", round(time.Since(t0)))
	t0 = time.Now()
	rev, err := writeConsoleState(ctx, c.Client(0), *devices, *quarantined, *atRisk)
	if err != nil {
		return err
	}
	if err := waitRevision(c, rev); err != nil {
		return err
	}
	fmt.Printf("state: %d devices quarantined, %d given a risk score (1-100), through POST /v1/state in batches of 1,000: %v\n",
		*quarantined, *atRisk, round(time.Since(t0)))
	memory(c, "after apply and state")

	base := "http://" + c.Member(0).APIAddr
	cc := &consoleClient{base: base, token: c.Token(),
		http: &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: *clients, MaxIdleConns: *clients}}}
	if err := consoleLatency(cc, consoleShape{devices: *devices, zones: *zones, gwPerZone: *gwPerZone, perZone: perZone,
		quarantined: *quarantined, atRisk: *atRisk}, *requests, *clients, *kindLimit); err != nil {
		return err
	}
	memory(c, "after the console requests")

	return streamCost(ctx, c, ix, cc, streamConfig{devices: *devices, distinct: *distinct, rate: *rate, inflight: *inflight,
		conns: *conns, phase: *phase, rounds: *rounds})
}

// writeConsoleState quarantines and scores devices (none of them among the
// Checks' devices, which are multiples of devices/distinct) so that the
// state filters have something to find.
func writeConsoleState(ctx context.Context, cl *api.Client, devices, quarantined, atRisk int) (topology.Revision, error) {
	rng := rand.New(rand.NewPCG(14, 14))
	var ops []raft.StateOp
	var rev topology.Revision
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		r, err := cl.UpdateState(ctx, ops)
		if err != nil {
			return fmt.Errorf("POST /v1/state: %w", err)
		}
		rev, ops = r, ops[:0]
		return nil
	}
	for k := range quarantined {
		ops = append(ops, raft.StateOp{Subject: topology.DeviceSubject(topologytest.DeviceName((k*(devices/max(quarantined, 1)) + 1) % devices)),
			Op: raft.OpQuarantine, Quarantine: &topology.Quarantine{Reason: "vigil-load console"}})
		if len(ops) == 1000 {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	for k := range atRisk {
		ops = append(ops, raft.StateOp{Subject: topology.DeviceSubject(topologytest.DeviceName((k*(devices/max(atRisk, 1)) + 2) % devices)),
			Op: raft.OpSetRisk, Risk: &topology.Risk{Score: 1 + rng.IntN(100)}})
		if len(ops) == 1000 {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	return rev, flush()
}

// consoleClient sends the console's GET requests with the bearer token.
type consoleClient struct {
	base, token string
	http        *http.Client
}

// get fetches path and returns its body and how long the request took
// (until the whole body was read).
func (cc *consoleClient) get(ctx context.Context, path string) ([]byte, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cc.base+path, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+cc.token)
	t0 := time.Now()
	resp, err := cc.http.Do(req)
	if err != nil {
		return nil, 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(t0)
	if err != nil {
		return nil, took, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, took, fmt.Errorf("GET %s: %s: %.200s", path, resp.Status, body)
	}
	return body, took, nil
}

type consoleShape struct {
	devices, zones, gwPerZone, perZone, quarantined, atRisk int
}

// consoleKind is one kind of console request: path makes a random one.
type consoleKind struct {
	name string
	n    int
	path func(r *rand.Rand) string
}

// randomOffset is a random page start in a list of n.
func randomOffset(r *rand.Rand, n, limit int) int { return r.IntN(max(1, n-limit+1)) }

// randomSubstring is 3 to 8 characters of a random device's name.
func randomSubstring(r *rand.Rand, devices int) string {
	name := topologytest.DeviceName(r.IntN(devices))
	l := min(len(name), 3+r.IntN(6))
	s := r.IntN(len(name) - l + 1)
	return name[s : s+l]
}

func consoleLatency(cc *consoleClient, sh consoleShape, requests, clients int, limit time.Duration) error {
	header(fmt.Sprintf("console API: %d requests per kind, %d concurrent clients, limit 50, target p99 ≤ %v", requests, clients, consoleTarget))
	zone := func(r *rand.Rand) string { return topologytest.ZoneName(r.IntN(sh.zones)) }
	kinds := []consoleKind{
		{"devices: a random page of all", requests, func(r *rand.Rand) string {
			return fmt.Sprintf("/v1/devices?offset=%d&limit=50", randomOffset(r, sh.devices, 50))
		}},
		{"devices of a gateway", requests, func(r *rand.Rand) string {
			return "/v1/devices?limit=50&gateway=" + topologytest.GatewayName(r.IntN(sh.zones*sh.gwPerZone))
		}},
		{"devices of a zone: a random page", requests, func(r *rand.Rand) string {
			return fmt.Sprintf("/v1/devices?zone=%s&offset=%d&limit=50", zone(r), randomOffset(r, sh.perZone, 50))
		}},
		{"search: 3-8 chars of a device name", requests, func(r *rand.Rand) string {
			return "/v1/devices?limit=50&q=" + url.QueryEscape(randomSubstring(r, sh.devices))
		}},
		{"search: every device matches (q=d-0)", max(1, requests/10), func(r *rand.Rand) string {
			return "/v1/devices?limit=50&q=d-0"
		}},
		{"search: nothing matches", requests, func(r *rand.Rand) string {
			return fmt.Sprintf("/v1/devices?limit=50&q=zq%d", r.IntN(1_000_000))
		}},
		{"state=quarantined", requests, func(r *rand.Rand) string {
			return fmt.Sprintf("/v1/devices?state=quarantined&offset=%d&limit=50", randomOffset(r, sh.quarantined, 50))
		}},
		{"state=at-risk (sorted by risk)", requests, func(r *rand.Rand) string {
			return fmt.Sprintf("/v1/devices?state=at-risk&offset=%d&limit=50", randomOffset(r, sh.atRisk, 50))
		}},
		{"zones", requests, func(*rand.Rand) string { return "/v1/zones" }},
		{"gateways of a zone: a random page", requests, func(r *rand.Rand) string {
			return fmt.Sprintf("/v1/zones/%s/gateways?offset=%d&limit=50", zone(r), randomOffset(r, sh.gwPerZone, 50))
		}},
		{"console summary (cached ≤ 2 s)", requests, func(*rand.Rand) string { return "/v1/console/summary" }},
	}
	ctx := context.Background()
	// The first search after an apply builds the name buffer, and the first
	// summary after a state change walks the state: timed on their own.
	var firsts []string
	for _, f := range []struct{ what, path string }{
		{"first search after the apply (builds the lower-cased name buffer)", "/v1/devices?limit=50&q=" + url.QueryEscape(randomSubstring(rand.New(rand.NewPCG(1, 1)), sh.devices))},
		{"first summary after the state writes (walks the state)", "/v1/console/summary"},
	} {
		_, took, err := cc.get(ctx, f.path)
		if err != nil {
			return err
		}
		firsts = append(firsts, fmt.Sprintf("%s: %v", f.what, round(took)))
	}
	fmt.Printf("| request | n | p50 | p90 | p99 | max | p99 ≤ %v | total matched (median / max) | bytes (median) |\n|---|---|---|---|---|---|---|---|---|\n", consoleTarget)
	missed := 0
	for k, kind := range kinds {
		lat, totals, sizes, errs, stopped := runKind(ctx, cc, kind, clients, limit, uint64(k))
		if errs > 0 && len(lat) == 0 {
			return fmt.Errorf("%s: every request failed", kind.name)
		}
		verdict := "yes"
		if lat.pct(.99) > consoleTarget {
			verdict, missed = "**no**", missed+1
		}
		matched := ""
		if len(totals) > 0 {
			slices.Sort(totals)
			matched = fmt.Sprintf("%d / %d", totals[len(totals)/2], totals[len(totals)-1])
		}
		slices.Sort(sizes)
		n := fmt.Sprint(len(lat))
		if errs > 0 {
			n += fmt.Sprintf(" (+%d errors)", errs)
		}
		if stopped {
			n += fmt.Sprintf(" (stopped at %v)", limit)
		}
		fmt.Printf("| %s | %s | %v | %v | %v | %v | %s | %s | %d |\n", kind.name, n,
			round(lat.pct(.5)), round(lat.pct(.9)), round(lat.pct(.99)), round(lat.pct(1)), verdict, matched, sizes[len(sizes)/2])
	}
	for _, f := range firsts {
		fmt.Println(f)
	}
	if missed == 0 {
		fmt.Printf("verdict: every kind of request met p99 ≤ %v\n", consoleTarget)
	} else {
		fmt.Printf("verdict: %d of %d kinds of request MISSED p99 ≤ %v\n", missed, len(kinds), consoleTarget)
	}
	return nil
}

// runKind sends kind.n requests from clients workers, or as many as fit in
// limit, and returns their latencies, the totals of device lists, the
// body sizes and the number of failures.
func runKind(ctx context.Context, cc *consoleClient, kind consoleKind, clients int, limit time.Duration, seed uint64) (lat latencies, totals, sizes []int, errs int, stopped bool) {
	var mu sync.Mutex
	var next atomic.Int64
	deadline := time.Now().Add(limit)
	var wg sync.WaitGroup
	for w := range clients {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			for {
				if int(next.Add(1)) > kind.n {
					return
				}
				if time.Now().After(deadline) {
					mu.Lock()
					stopped = true
					mu.Unlock()
					return
				}
				path := kind.path(r)
				body, took, err := cc.get(ctx, path)
				var page struct {
					Total *int `json:"total"`
				}
				if err == nil {
					json.Unmarshal(body, &page)
				}
				mu.Lock()
				if err != nil {
					errs++
					if errs == 1 {
						fmt.Fprintf(os.Stderr, "%s: %v\n", kind.name, err)
					}
				} else {
					lat = append(lat, took)
					sizes = append(sizes, len(body))
					if page.Total != nil && strings.HasPrefix(path, "/v1/devices") {
						totals = append(totals, *page.Total)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return lat, totals, sizes, errs, stopped
}

type streamConfig struct {
	devices, distinct, rate, inflight, conns, rounds int
	phase                                            time.Duration
}

// sseStream is one console's live decision stream, read as a browser's
// EventSource would: line by line.
type sseStream struct {
	query  string
	events atomic.Int64
	bytes  atomic.Int64
	stats  atomic.Pointer[api.StreamStats]
	done   chan struct{}
	err    error
}

func openStream(ctx context.Context, cc *consoleClient, query string) (*sseStream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cc.base+"/v1/decisions/stream?"+query, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+cc.token)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := (&http.Client{Transport: cc.http.Transport}).Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1000))
		resp.Body.Close()
		return nil, fmt.Errorf("stream %s: %s: %s", query, resp.Status, b)
	}
	s := &sseStream{query: query, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		event := ""
		for sc.Scan() {
			line := sc.Bytes()
			s.bytes.Add(int64(len(line) + 1))
			switch {
			case len(line) == 0:
				event = ""
			case strings.HasPrefix(string(line), "event: "):
				event = string(line[len("event: "):])
			case event == "decision" && strings.HasPrefix(string(line), "data: "):
				s.events.Add(1)
			case event == "stats" && strings.HasPrefix(string(line), "data: "):
				var st api.StreamStats
				if json.Unmarshal(line[len("data: "):], &st) == nil {
					s.stats.Store(&st)
				}
			}
		}
		if ctx.Err() == nil {
			s.err = sc.Err()
		}
	}()
	return s, nil
}

type streamPhase struct {
	name    string
	queries []string
}

type streamResult struct {
	checks, errors     int
	allowed, denied    int
	elapsed            time.Duration
	lat                latencies
	memberCPU, toolCPU time.Duration
	streams            []*sseStream
}

func (p streamResult) rate() float64 { return float64(p.checks) / p.elapsed.Seconds() }
func (p streamResult) cpuPerCheck() float64 {
	return float64(p.memberCPU.Microseconds()) / float64(max(p.checks, 1))
}

func streamCost(ctx context.Context, c *harness.Cluster, ix *topology.Index, cc *consoleClient, cfg streamConfig) error {
	distinct := min(cfg.distinct, cfg.devices)
	reqs := authztest.Requests(ix, distinct, cfg.devices)
	clients := make([]authv3.AuthorizationClient, max(cfg.conns, 1))
	for i := range clients {
		conn, err := grpc.NewClient(c.Member(0).AuthzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		clients[i] = authv3.NewAuthorizationClient(conn)
	}
	// Every request once, so that the phases see cached decisions, as a
	// fleet's repeating telemetry does.
	if err := forEach(len(reqs), cfg.inflight, func(i int) error {
		_, err := clients[i%len(clients)].Check(ctx, reqs[i])
		return err
	}); err != nil {
		return fmt.Errorf("warm-up Checks: %w", err)
	}
	gwOf := func(r *authv3.CheckRequest) string {
		sub, _ := ix.BySPIFFEID(r.GetAttributes().GetSource().GetPrincipal())
		d, _ := ix.Device(sub.Name)
		return d.Gateway
	}
	g1, g2 := gwOf(reqs[0]), gwOf(reqs[min(1, len(reqs)-1)])
	phases := []streamPhase{
		{"a: no stream", nil},
		{"b: 1 stream, no filter, rate 2,000/s (default)", []string{"scope=member"}},
		{"c: 1 stream, no filter, rate=20000", []string{"scope=member&rate=20000"}},
		{"d: 4 filtered streams", []string{"scope=member&result=allow", "scope=member&result=deny",
			"scope=member&gateway=" + g1, "scope=member&gateway=" + g2 + "&result=deny"}},
	}
	offered := "as fast as they are answered"
	if cfg.rate > 0 {
		offered = fmt.Sprintf("offered at %d/s", cfg.rate)
	}
	header(fmt.Sprintf("live decision stream: ext_authz Checks %s (%d in flight at most, %d connections, %d distinct, half allowed), %v per phase, %d rounds",
		offered, cfg.inflight, len(clients), distinct, cfg.phase, cfg.rounds))
	fmt.Println("member CPU and the load tool's CPU (gRPC client and stream readers) are measured over the Checks of each phase; the stream figures are per second of the phase")
	fmt.Println("| round | phase | Checks/s | Check p50 / p99 | member CPU per Check | load tool CPU | stream | events/s | KiB/s | matched / sent / dropped / skipped per s |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	results := make(map[string][]streamResult)
	for r := range cfg.rounds {
		for _, ph := range phases {
			res, err := streamPhaseRun(ctx, c, cc, clients, reqs, ph, cfg)
			if err != nil {
				return fmt.Errorf("round %d, phase %s: %w", r+1, ph.name, err)
			}
			results[ph.name] = append(results[ph.name], res)
			lead := fmt.Sprintf("| %d | %s | %.0f | %v / %v | %.1f µs | %.2f s", r+1, ph.name, res.rate(),
				round(res.lat.pct(.5)), round(res.lat.pct(.99)), res.cpuPerCheck(), res.toolCPU.Seconds())
			if res.errors > 0 {
				lead += fmt.Sprintf(" (%d Check errors)", res.errors)
			}
			if len(res.streams) == 0 {
				fmt.Println(lead + " | – | | | |")
			}
			secs := res.elapsed.Seconds()
			for i, s := range res.streams {
				if i > 0 {
					lead = "| | | | | |"
				}
				st := s.stats.Load()
				if st == nil {
					st = &api.StreamStats{}
				}
				q := strings.TrimPrefix(strings.TrimPrefix(s.query, "scope=member"), "&")
				if q == "" {
					q = "no filter"
				}
				fmt.Printf("%s | %s | %.0f | %.0f | %.0f / %.0f / %.0f / %.0f |\n", lead, q,
					float64(s.events.Load())/secs, float64(s.bytes.Load())/1024/secs,
					float64(st.Matched)/secs, float64(st.Sent)/secs, float64(st.Dropped)/secs, float64(st.Skipped)/secs)
				if s.err != nil {
					fmt.Printf("(stream %s ended with %v)\n", s.query, s.err)
				}
			}
		}
	}
	base := results[phases[0].name]
	baseRate, baseCPU := meanOf(base, streamResult.rate), meanOf(base, streamResult.cpuPerCheck)
	fmt.Println("\nmeans over the rounds:")
	fmt.Println("| phase | Checks/s | Check p99 | member CPU per Check | vs no stream |")
	fmt.Println("|---|---|---|---|---|")
	for _, ph := range phases {
		rs := results[ph.name]
		var all latencies
		for _, r := range rs {
			all = append(all, r.lat...)
		}
		rate, cpu := meanOf(rs, streamResult.rate), meanOf(rs, streamResult.cpuPerCheck)
		fmt.Printf("| %s | %.0f | %v | %.1f µs | Checks/s %+.1f %%, CPU per Check %+.1f %% |\n", ph.name, rate, round(all.pct(.99)), cpu,
			100*(rate-baseRate)/baseRate, 100*(cpu-baseCPU)/baseCPU)
	}
	rss, peak, _ := harness.ProcMemory(c.PID(0))
	fmt.Printf("member RSS %s (peak %s)\n", mib(rss), mib(peak))
	return nil
}

func meanOf(rs []streamResult, f func(streamResult) float64) float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = f(r)
	}
	return mean(xs)
}

// streamPhaseRun opens the phase's streams, sends Checks for cfg.phase,
// waits for the stats event that covers them and closes the streams.
func streamPhaseRun(ctx context.Context, c *harness.Cluster, cc *consoleClient, clients []authv3.AuthorizationClient,
	reqs []*authv3.CheckRequest, ph streamPhase, cfg streamConfig) (streamResult, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var res streamResult
	for _, q := range ph.queries {
		s, err := openStream(sctx, cc, q)
		if err != nil {
			return res, err
		}
		res.streams = append(res.streams, s)
	}
	time.Sleep(200 * time.Millisecond) // let the subscriptions settle
	for _, s := range res.streams {
		s.events.Store(0)
		s.bytes.Store(0)
	}
	mem0, _ := procCPU(c.PID(0))
	tool0, _ := procCPU(os.Getpid())
	var mu sync.Mutex
	var next atomic.Int64
	var interval time.Duration
	if cfg.rate > 0 {
		interval = time.Second / time.Duration(cfg.rate)
	}
	start := time.Now()
	deadline := start.Add(cfg.phase)
	var wg sync.WaitGroup
	for range cfg.inflight {
		wg.Go(func() {
			var mine latencies
			var a, d, f int
			for {
				k := next.Add(1) - 1
				if interval > 0 {
					due := start.Add(time.Duration(k) * interval)
					if !due.Before(deadline) {
						break
					}
					if wait := time.Until(due); wait > 0 {
						time.Sleep(wait)
					}
				} else if !time.Now().Before(deadline) {
					break
				}
				t0 := time.Now()
				resp, err := clients[int(k)%len(clients)].Check(ctx, reqs[int(k)%len(reqs)])
				mine = append(mine, time.Since(t0))
				switch {
				case err != nil:
					f++
				case resp.GetStatus().GetCode() == 0:
					a++
				default:
					d++
				}
			}
			mu.Lock()
			res.lat = append(res.lat, mine...)
			res.allowed, res.denied, res.errors = res.allowed+a, res.denied+d, res.errors+f
			mu.Unlock()
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	mem1, _ := procCPU(c.PID(0))
	tool1, _ := procCPU(os.Getpid())
	res.memberCPU, res.toolCPU = mem1-mem0, tool1-tool0
	res.checks = len(res.lat) - res.errors
	if len(res.streams) > 0 {
		// The stats event comes once a second: wait for one that counts
		// every Check of the phase.
		want := time.Now().Add(1500 * time.Millisecond)
		time.Sleep(time.Until(want))
	}
	cancel()
	for _, s := range res.streams {
		<-s.done
	}
	return res, nil
}
