package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/vigil-iot/vigil/authz/authztest"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/topology"
)

// runAuthzCompare measures Vigil's ext_authz Check side by side with a
// Check server that does nothing (e2e/cmd/vigil-noop-authz, a separate
// process), in one run, over the same connection setup and the same
// requests, alternating phases:
//
//	noop      the do-nothing server, every request distinct
//	cached    Vigil, the -distinct requests cycled, the decision cache
//	          filled before the phase (so every decision is a hit)
//	uncached  Vigil, every request distinct (the same devices, gateways,
//	          connections and hosts as in the cached phase, each with a path
//	          of its own within an allowed prefix), so every decision is
//	          evaluated
//
// and prints checks/s, latency, each server's CPU per Check (utime+stime
// from /proc), and the ratios to the do-nothing server, which are the
// targets of issue 15: uncached ≥ 0.8× the do-nothing server's rate, and
// member CPU per Check over mutual TLS (-tls) ≤ 1.5× the do-nothing
// server's.
func runAuthzCompare(args []string) error {
	fs := flag.NewFlagSet("authz-compare", flag.ExitOnError)
	duration := fs.Duration("duration", 10*time.Second, "length of each measured phase")
	rounds := fs.Int("rounds", 2, "rounds of the three phases (noop cached uncached noop cached uncached ...)")
	warmup := fs.Duration("warmup", 2*time.Second, "unmeasured load on each server before the first round")
	inflight := fs.Int("inflight", 16, "requests in flight")
	conns := fs.Int("conns", 4, "plaintext gRPC connections to each server that the requests share (with -tls: one per gateway)")
	devices := fs.Int("devices", 100_000, "devices in the topology")
	distinct := fs.Int("distinct", 20_000, "requests of the cached phase, cycled; the other phases send the same devices' requests, each with a path of its own")
	useTLS := fs.Bool("tls", false, "mutual TLS to both servers (the member with --proxy-tls-*, the do-nothing server with the same configuration): each request on a connection holding its device's gateway's SVID, one connection per gateway and server")
	other := fs.String("bin", "", "a vigil binary to measure instead of this checkout's (e.g. a commit before a change, built with go build -o)")
	extra := fs.String("member-args", "", "extra flags for the member, space-separated (e.g. \"--monitor=false\" or \"--policy-engine=rego\")")
	profiles := fs.String("pprof", "", "write a CPU profile of the member during each Vigil phase of the first round to this directory (the member gets a loopback --debug-pprof-addr)")
	quick := fs.Bool("quick", false, "smoke run: 3 s phases, 1 s warm-up, one round (flags given explicitly win)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"duration": "3s", "warmup": "1s", "rounds": "1"} {
			if !set[name] {
				fs.Set(name, v)
			}
		}
	}
	fmt.Println(harness.Hardware())
	fmt.Println("load average at start:", loadAverage())
	dir, err := os.MkdirTemp("", "vigil-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := *other
	if bin == "" {
		if bin, err = harness.Build(filepath.Join(dir, "bin")); err != nil {
			return err
		}
	}
	noopBin, err := harness.BuildTool(filepath.Join(dir, "bin"), "vigil-noop-authz")
	if err != nil {
		return err
	}

	var ca *spiffetest.CA
	var noopArgs []string
	if *useTLS {
		ca = spiffetest.NewCA(fatal{}, "city.example")
		cert, key, bundle := ca.Write(fatal{}, ca.Issue(fatal{}, "spiffe://city.example/vigil/node/noop", "127.0.0.1"), dir, "noop")
		noopArgs = []string{"-tls-cert", cert, "-tls-key", key, "-tls-ca", bundle}
	}
	noop, err := startNoopAuthz(noopBin, noopArgs)
	if err != nil {
		return err
	}
	defer noop.stop()
	memberArgs = strings.Fields(*extra)
	var pprofAddr string
	if *profiles != "" {
		if pprofAddr, err = harness.FreeAddr(); err != nil {
			return err
		}
		memberArgs = append(memberArgs, "--debug-pprof-addr", pprofAddr)
		if err := os.MkdirAll(*profiles, 0o755); err != nil {
			return err
		}
	}
	c, ix, err := startAuthzMember(bin, dir, *devices, ca, generousRateLimits)
	if err != nil {
		return err
	}
	defer c.Close()

	reqs := authztest.Requests(ix, min(*distinct, *devices), *devices)
	shapes := make([]checkShape, len(reqs))
	for i, r := range reqs {
		shapes[i] = newCheckShape(r)
	}
	conn := newAuthzConns(ix, ca, *conns)
	defer conn.Close()
	noopClients, err := conn.clients(noop.addr, reqs)
	if err != nil {
		return err
	}
	vigilClients, err := conn.clients(c.Member(0).AuthzAddr, reqs)
	if err != nil {
		return err
	}
	srvNoop := &checkTarget{name: "do-nothing", pid: noop.p.PID(), clientOf: noopClients}
	srvVigil := &checkTarget{name: "vigil", pid: c.PID(0), clientOf: vigilClients}
	pids := []int{srvNoop.pid, srvVigil.pid}

	fmt.Printf("binary %s\n", bin)
	fmt.Printf("1 member and a do-nothing Check server on 127.0.0.1, %d devices, %d requests in flight over %d connections to each (%s), "+
		"%d rounds of 3 phases of %v, half the requests allowed and half denied, rate limits raised to 1000/s (none refuses)\n",
		*devices, *inflight, conn.count(reqs), conn.mode(), *rounds, *duration)
	fmt.Printf("cached: %d distinct requests cycled, decision cache filled before the phase; uncached and do-nothing: every request distinct "+
		"(same devices and connections: a camera's upload to /upload/cam-K.jpg, a sensor's GET /firmware/fw-K.bin, the denied ones DELETE %s/K)\n",
		len(reqs), "/api/v1/telemetry")

	ctx := context.Background()
	var seq atomic.Int64
	header("warm-up (not measured)")
	for _, w := range []struct {
		t      *checkTarget
		unique bool
	}{{srvNoop, true}, {srvVigil, true}} {
		r := w.t.run(ctx, shapes, &seq, w.unique, *inflight, *warmup, pids)
		fmt.Printf("%-10s %8.0f checks/s (errors %d)\n", w.t.name, r.rate(), r.failed)
		if r.failed > 0 {
			return fmt.Errorf("%s: %d of %d Checks failed in the warm-up: %v", w.t.name, r.failed, r.checks, r.firstErr)
		}
	}

	header(fmt.Sprintf("ext_authz Check, side by side (%s)", conn.mode()))
	type phase struct {
		name   string
		t      *checkTarget
		unique bool
	}
	phases := []phase{{"do-nothing", srvNoop, true}, {"vigil cached", srvVigil, false}, {"vigil uncached", srvVigil, true}}
	total := make([]checkPhase, len(phases))
	perRound := make([][]checkPhase, len(phases))
	for r := range *rounds {
		for i, ph := range phases {
			if !ph.unique {
				ph.t.fill(ctx, shapes, *inflight)
			}
			var profDone chan struct{}
			if pprofAddr != "" && r == 0 && ph.t == srvVigil {
				profDone = memberProfile(pprofAddr, filepath.Join(*profiles, strings.ReplaceAll(ph.name, " ", "-")+".pprof"), *duration)
			}
			res := ph.t.run(ctx, shapes, &seq, ph.unique, *inflight, *duration, pids)
			if profDone != nil {
				<-profDone
			}
			fmt.Printf("round %d %-15s %s\n", r+1, ph.name, res)
			if res.failed > res.checks/100 {
				return fmt.Errorf("%s: %d of %d Checks failed: %v", ph.name, res.failed, res.checks, res.firstErr)
			}
			total[i].add(res)
			perRound[i] = append(perRound[i], res)
		}
	}

	header("summary (all rounds)")
	fmt.Printf("%-15s %10s %26s %18s %18s %13s\n", "phase", "checks/s", "p50 / p90 / p99", "server CPU/check", "load gen CPU/check", "other load")
	for i, ph := range phases {
		t := total[i]
		fmt.Printf("%-15s %10.0f %26s %15.1f µs %15.1f µs %8.2f cores\n", ph.name, t.rate(),
			fmt.Sprintf("%v / %v / %v", round(t.lat.pct(.5)), round(t.lat.pct(.9)), round(t.lat.pct(.99))),
			t.serverCPUPerCheck(), t.selfCPUPerCheck(), t.otherCores())
	}
	noopT, cached, uncached := total[0], total[1], total[2]
	perRoundRatio := func(i int, f func(a, b checkPhase) float64) string {
		var s []string
		for r := range perRound[i] {
			s = append(s, fmt.Sprintf("%.2f", f(perRound[i][r], perRound[0][r])))
		}
		return strings.Join(s, ", ")
	}
	rateRatio := func(a, b checkPhase) float64 { return a.rate() / b.rate() }
	cpuRatio := func(a, b checkPhase) float64 { return a.serverCPUPerCheck() / b.serverCPUPerCheck() }
	fmt.Println()
	fmt.Printf("checks/s, vigil uncached / do-nothing: %.2f (rounds: %s; target ≥ 0.8)\n", rateRatio(uncached, noopT), perRoundRatio(2, rateRatio))
	fmt.Printf("checks/s, vigil cached / do-nothing:   %.2f (rounds: %s)\n", rateRatio(cached, noopT), perRoundRatio(1, rateRatio))
	target := ""
	if *useTLS {
		target = "; target ≤ 1.5 over mutual TLS"
	}
	fmt.Printf("server CPU per check, vigil uncached / do-nothing: %.2f (rounds: %s%s)\n", cpuRatio(uncached, noopT), perRoundRatio(2, cpuRatio), target)
	fmt.Printf("server CPU per check, vigil cached / do-nothing:   %.2f (rounds: %s%s)\n", cpuRatio(cached, noopT), perRoundRatio(1, cpuRatio), target)
	if n := cached.limited + uncached.limited; n > 0 {
		fmt.Printf("note: %d allowed requests were over a rate limit (429) and count as denied\n", n)
	}
	rss, peak, _ := harness.ProcMemory(srvVigil.pid)
	nrss, npeak, _ := harness.ProcMemory(srvNoop.pid)
	fmt.Printf("member RSS %s (peak %s); do-nothing server RSS %s (peak %s)\n", mib(rss), mib(peak), mib(nrss), mib(npeak))
	fmt.Println("load average at end:", loadAverage())
	return nil
}

// generousRateLimits raises every rate limit of the document to 1000/s:
// the limiter still does its work on every allowed request (a bucket per
// device and per device and flow), but refuses none, so that every phase
// answers the same mix however fast a build is. With the generated 10/m
// on telemetry, the cached phase's devices (20,000 requests cycled, each
// ~15 times in a run) would start being refused in the second round.
func generousRateLimits(doc *topology.Document) {
	for i := range doc.DeviceClasses {
		if doc.DeviceClasses[i].RateLimit != "" {
			doc.DeviceClasses[i].RateLimit = "1000/s"
		}
	}
	for i := range doc.Flows {
		if doc.Flows[i].RateLimit != "" {
			doc.Flows[i].RateLimit = "1000/s"
		}
	}
}

// checkShape is one base request, in its cached form (as authztest makes
// it) and its distinct form: the same device, so the same gateway and
// connection, with a path of its own per sequence number K within a prefix
// that decides the same way (an allowed request stays allowed, a denied
// one denied).
type checkShape struct {
	principal          string
	method, host, path string // cached form
	uMethod, uHost     string // distinct form: path uPre+K+uSuf
	uPre, uSuf         string
}

func newCheckShape(r *authv3.CheckRequest) checkShape {
	h := r.GetAttributes().GetRequest().GetHttp()
	s := checkShape{principal: r.GetAttributes().GetSource().GetPrincipal(), method: h.GetMethod(), host: h.GetHost(), path: h.GetPath()}
	switch {
	case s.method != "POST": // denied: DELETE, on the same service
		s.uMethod, s.uHost, s.uPre = s.method, s.host, s.path+"/"
	case strings.HasPrefix(s.path, "/upload/"): // camera-upload allows /upload/*
		s.uMethod, s.uHost, s.uPre, s.uSuf = "POST", s.host, "/upload/cam-", ".jpg"
	default: // telemetry is one exact path; firmware-fetch allows GET /firmware/* to every class
		s.uMethod, s.uHost, s.uPre, s.uSuf = "GET", "firmware.city.example", "/firmware/fw-", ".bin"
	}
	return s
}

// request builds the Check for sequence number k, as authztest does. Both
// forms are built anew per Check, so that the load generator does the same
// work in every phase.
func (s *checkShape) request(k int64, distinct bool) *authv3.CheckRequest {
	method, host, path := s.method, s.host, s.path
	id := strconv.FormatInt(k, 10)
	if distinct {
		method, host, path = s.uMethod, s.uHost, s.uPre+id+s.uSuf
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: s.principal},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Id: id, Method: method, Path: path, Host: host, Scheme: "https", Protocol: "HTTP/1.1",
			Headers: map[string]string{":authority": host, ":method": method, ":path": path,
				"content-type": "application/json", "user-agent": "slc-firmware/2.4.1"},
		}},
	}}
}

// checkTarget is a Check server and the client of each base request.
type checkTarget struct {
	name     string
	pid      int
	clientOf []authv3.AuthorizationClient
}

// checkPhase is what one phase measured.
type checkPhase struct {
	checks, allowed, denied, limited, failed int
	firstErr                                 error
	elapsed                                  time.Duration
	lat                                      latencies
	serverCPU, selfCPU, machineBusy, allCPU  time.Duration // allCPU: both servers and the load generator
}

func (r checkPhase) rate() float64 { return float64(r.checks) / max(r.elapsed.Seconds(), 1e-9) }

func (r checkPhase) serverCPUPerCheck() float64 {
	return float64(r.serverCPU.Nanoseconds()) / 1e3 / float64(max(r.checks, 1))
}

func (r checkPhase) selfCPUPerCheck() float64 {
	return float64(r.selfCPU.Nanoseconds()) / 1e3 / float64(max(r.checks, 1))
}

// otherCores is the CPU the rest of the machine used during the phase, in
// cores: whatever was busy besides both servers and the load generator.
func (r checkPhase) otherCores() float64 {
	return max(0, (r.machineBusy-r.allCPU).Seconds()) / max(r.elapsed.Seconds(), 1e-9)
}

func (r *checkPhase) add(o checkPhase) {
	r.checks += o.checks
	r.allowed += o.allowed
	r.denied += o.denied
	r.limited += o.limited
	r.failed += o.failed
	r.elapsed += o.elapsed
	r.lat = append(r.lat, o.lat...)
	r.serverCPU += o.serverCPU
	r.selfCPU += o.selfCPU
	r.machineBusy += o.machineBusy
	r.allCPU += o.allCPU
}

func (r checkPhase) String() string {
	s := fmt.Sprintf("%8.0f checks/s  p50 %v p90 %v p99 %v  server CPU %.1f µs/check, load gen %.1f µs/check, other load %.2f cores  (allowed %d, denied %d",
		r.rate(), round(r.lat.pct(.5)), round(r.lat.pct(.9)), round(r.lat.pct(.99)),
		r.serverCPUPerCheck(), r.selfCPUPerCheck(), r.otherCores(), r.allowed, r.denied)
	if r.limited > 0 {
		s += fmt.Sprintf(" of which %d over a rate limit", r.limited)
	}
	if r.failed > 0 {
		s += fmt.Sprintf(", errors %d: %v", r.failed, r.firstErr)
	}
	return s + ")"
}

// run sends Checks with inflight workers for d: request k (from seq) is
// base request k mod len(shapes), distinct or in its cached form. It
// measures t's process and the load generator; pids are every server, so
// that what the rest of the machine did can be told apart.
func (t *checkTarget) run(ctx context.Context, shapes []checkShape, seq *atomic.Int64, distinct bool, inflight int, d time.Duration, pids []int) checkPhase {
	var mu sync.Mutex
	var res checkPhase
	cpuOf := func() (server, all time.Duration) {
		for _, pid := range pids {
			c, _ := procCPU(pid)
			if pid == t.pid {
				server = c
			}
			all += c
		}
		return server, all
	}
	var wg sync.WaitGroup
	srv0, all0 := cpuOf()
	self0, _ := procCPU(os.Getpid())
	busy0 := machineBusy()
	start := time.Now()
	deadline := start.Add(d)
	for range inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine checkPhase
			for time.Now().Before(deadline) {
				k := seq.Add(1)
				b := int(k % int64(len(shapes)))
				req := shapes[b].request(k, distinct)
				t0 := time.Now()
				resp, err := t.clientOf[b].Check(ctx, req)
				mine.lat = append(mine.lat, time.Since(t0))
				mine.checks++
				switch {
				case err != nil:
					mine.failed++
					if mine.firstErr == nil {
						mine.firstErr = err
					}
				case resp.GetStatus().GetCode() == 0:
					mine.allowed++
				default:
					mine.denied++
					if resp.GetDeniedResponse().GetStatus().GetCode() == typev3.StatusCode_TooManyRequests {
						mine.limited++
					}
				}
			}
			mu.Lock()
			if res.firstErr == nil {
				res.firstErr = mine.firstErr
			}
			res.add(mine)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	srv1, all1 := cpuOf()
	self1, _ := procCPU(os.Getpid())
	res.serverCPU, res.selfCPU = srv1-srv0, self1-self0
	res.allCPU = all1 - all0 + res.selfCPU
	res.machineBusy = machineBusy() - busy0
	return res
}

// fill sends every base request once in its cached form (not measured), so
// that Vigil's decision cache holds them all: the distinct requests of an
// uncached phase push entries out of it.
func (t *checkTarget) fill(ctx context.Context, shapes []checkShape, inflight int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := next.Add(1) - 1; k < int64(len(shapes)); k = next.Add(1) - 1 {
				t.clientOf[k].Check(ctx, shapes[k].request(k, false))
			}
		}()
	}
	wg.Wait()
}

// noopAuthz is a running vigil-noop-authz.
type noopAuthz struct {
	p     *harness.Process
	stdin io.WriteCloser
	addr  string
}

// startNoopAuthz starts the do-nothing Check server on a port of its own
// choosing and waits until it serves.
func startNoopAuthz(bin string, args []string) (*noopAuthz, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p, err := harness.StartProcess(cmd)
	if err != nil {
		return nil, err
	}
	n := &noopAuthz{p: p, stdin: stdin}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		io.Copy(io.Discard, stdout)
	}()
	select {
	case l, ok := <-line:
		var found bool
		if n.addr, found = strings.CutPrefix(l, "listening on "); !ok || !found {
			n.stop()
			return nil, fmt.Errorf("vigil-noop-authz did not start: %q", l)
		}
	case <-time.After(30 * time.Second):
		n.stop()
		return nil, errors.New("vigil-noop-authz did not listen within 30 s")
	}
	return n, nil
}

// stop closes the server's standard input, which ends it, and kills it if
// it is still there after 5 s.
func (n *noopAuthz) stop() {
	n.stdin.Close()
	if _, err := n.p.Wait(5 * time.Second); err != nil {
		n.p.Kill()
	}
}

// machineBusy is the time all CPUs of the machine have spent busy (not
// idle, not waiting for I/O) since boot, from /proc/stat.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal guest guest_nice
	var ticks int64
	for i := 1; i < len(f) && i <= 8; i++ {
		if i == 4 || i == 5 {
			continue
		}
		n, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// memberProfile writes a CPU profile of the member (over its
// --debug-pprof-addr) taken during the next d, less a second, to path.
func memberProfile(addr, path string, d time.Duration) chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		secs := max(1, int(d.Seconds())-1)
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs))
		if err != nil {
			fmt.Println("profile:", err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(path)
		if err != nil {
			fmt.Println("profile:", err)
			return
		}
		defer f.Close()
		io.Copy(f, resp.Body)
		fmt.Println("member CPU profile:", path)
	}()
	return done
}
