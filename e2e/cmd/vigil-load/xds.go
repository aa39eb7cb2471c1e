package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// The xDS type URLs a simulated gateway subscribes to, in the order Envoy
// asks for them.
const (
	ldsType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	cdsType = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	rdsType = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	edsType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

	rbacFilter  = "envoy.filters.http.rbac" // xds.rbacFilterName
	rbacPerType = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
	changedFlow = "sensor-telemetry"
)

// runXDS opens N simulated gateway ADS streams to one member and measures
// the initial configuration, a flow change and quarantines, each until the
// streams have ACKed.
func runXDS(args []string) error {
	fs := flag.NewFlagSet("xds", flag.ExitOnError)
	sizes := fs.String("gateways", "1000", "comma-separated gateway (= ADS stream) counts, each run on a fresh member")
	perGW := fs.Int("devices-per-gateway", 2, "devices per gateway")
	perConn := fs.Int("streams-per-conn", 100, "ADS streams per gRPC connection")
	quarantines := fs.Int("quarantines", 50, "gateways that get one device quarantined (at most -gateways)")
	timeout := fs.Duration("timeout", 10*time.Minute, "bound on each run")
	useTLS := fs.Bool("tls", false, "run the member with proxy TLS: every gateway has its own mutual-TLS connection with its own SVID (-streams-per-conn is then 1)")
	other := fs.String("bin", "", "a vigil binary to measure instead of this checkout's (for before/after runs)")
	memberGOGC := fs.String("member-gogc", "", "run the member with this GOGC (Go's GC target percentage, or off; this tool keeps its own)")
	memberMemLimit := fs.String("member-memlimit", "", "run the member with this GOMEMLIMIT (Go's soft memory limit, e.g. 3GiB)")
	bdp := fs.Bool("grpc-bdp", false, "let the simulated gateways use grpc-go's dynamic HTTP/2 windows, which PING the member on every response they receive (as proxyless grpc-go gateways do); by default their windows are fixed, like Envoy's")
	profiles := fs.String("pprof", "", "write CPU profiles of the member (over its --debug-pprof-addr) and of this tool for the connect and push phases to this directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Println(harness.Hardware())
	dir, err := os.MkdirTemp("", "vigil-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := *other
	if bin == "" { // this checkout's
		if bin, err = harness.Build(filepath.Join(dir, "bin")); err != nil {
			return err
		}
	}
	fmt.Printf("member binary %s\n", bin)
	// Members inherit this process's environment; this process read its
	// own GOGC and GOMEMLIMIT when it started.
	for _, e := range []struct{ name, value string }{{"GOGC", *memberGOGC}, {"GOMEMLIMIT", *memberMemLimit}} {
		if e.value == "" {
			continue
		}
		if err := os.Setenv(e.name, e.value); err != nil {
			return err
		}
		fmt.Printf("member %s=%s\n", e.name, e.value)
	}
	if *profiles != "" {
		if err := os.MkdirAll(*profiles, 0o755); err != nil {
			return err
		}
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("-gateways: bad count %q", s)
		}
		r := xdsRun{bin: bin, dir: filepath.Join(dir, "gw"+strconv.Itoa(n)), gateways: n, perGW: *perGW,
			perConn: max(1, *perConn), quarantines: min(n, *quarantines), timeout: *timeout, tls: *useTLS, profiles: *profiles, bdp: *bdp}
		if r.tls {
			r.perConn = 1
		}
		if err := raiseOpenFiles((n+r.perConn-1)/r.perConn + 1024); err != nil {
			return fmt.Errorf("%d gateways: %w", n, err)
		}
		if err := r.run(); err != nil {
			return fmt.Errorf("%d gateways: %w", n, err)
		}
	}
	return nil
}

type xdsRun struct {
	bin, dir                              string
	gateways, perGW, perConn, quarantines int
	timeout                               time.Duration
	tls                                   bool
	profiles                              string // directory for CPU profiles, "" for none
	bdp                                   bool   // grpc-go's dynamic windows
}

func (r *xdsRun) run() error {
	zones := (r.gateways + 99) / 100
	spec := topologytest.Spec{Zones: zones, GatewaysPerZone: (r.gateways + zones - 1) / zones,
		Devices: r.gateways * r.perGW, NoAttestation: true}
	doc := topologytest.Generate(spec)
	if len(doc.Gateways) != r.gateways {
		return fmt.Errorf("%d gateways do not split evenly over %d zones; pick a multiple of %d", r.gateways, zones, zones)
	}
	header(fmt.Sprintf("xds: %d gateway streams, %d devices, %d zones", r.gateways, spec.Devices, zones))
	data, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	ix, err := topology.NewIndex(doc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()

	var flags []string
	var ca *spiffetest.CA
	if r.tls {
		if err := os.MkdirAll(r.dir, 0o700); err != nil {
			return err
		}
		ca = spiffetest.NewCA(fatal{}, doc.TrustDomain)
		cert, key, bundle := ca.Write(fatal{}, ca.Issue(fatal{}, topology.NodeSPIFFEID(doc.TrustDomain, "n1"), "127.0.0.1"), r.dir, "member")
		flags = []string{"--proxy-tls-cert", cert, "--proxy-tls-key", key, "--proxy-tls-ca", bundle}
	}
	var pprofAddr string
	if r.profiles != "" {
		if pprofAddr, err = harness.FreeAddr(); err != nil {
			return err
		}
		flags = append(flags, "--debug-pprof-addr", pprofAddr)
	}
	c, err := startCluster(r.bin, r.dir, harness.Options{Members: 1, Timeout: 3 * time.Minute, Args: flags})
	if err != nil {
		return err
	}
	defer c.Close()
	pid, api := c.PID(0), c.Client(0)
	t0 := time.Now()
	rev, err := api.ApplyTopology(ctx, data)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	if err := waitRevision(c, rev); err != nil {
		return err
	}
	fmt.Printf("1 member on 127.0.0.1; document %s of JSON applied in %v (revision %d)\n", mib(int64(len(data))), round(time.Since(t0)), rev)
	printProc(pid, "member before the streams")

	// 1. Connect every gateway.
	nConns := (r.gateways + r.perConn - 1) / r.perConn
	conns := make([]*grpc.ClientConn, nConns)
	for i := range conns {
		creds := insecure.NewCredentials()
		if r.tls { // conns[i] is gateway i's
			id, _ := ix.SPIFFEID(topology.GatewaySubject(doc.Gateways[i].Name))
			creds = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{ca.Issue(fatal{}, id).TLS}, RootCAs: ca.Pool, ServerName: "127.0.0.1"})
		}
		opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
		if !r.bdp {
			// Envoy's HTTP/2 windows are fixed (256 MiB by default) and it
			// sends no bandwidth-delay PINGs.
			opts = append(opts, grpc.WithStaticStreamWindowSize(256<<20), grpc.WithStaticConnWindowSize(256<<20))
		}
		if conns[i], err = grpc.NewClient(c.Member(0).XDSAddr, opts...); err != nil {
			return err
		}
		defer conns[i].Close()
	}
	affectedClasses := map[string]bool{}
	for _, f := range doc.Flows {
		if f.Name == changedFlow {
			for _, cl := range f.From.Classes {
				affectedClasses[cl] = true
			}
		}
	}
	streamCtx, stopStreams := context.WithCancel(ctx)
	gws := make([]*gwStream, r.gateways)
	var wg sync.WaitGroup
	defer wg.Wait() // after stopStreams (defers run last-in first-out)
	defer stopStreams()
	prof := r.profile(pprofAddr, "connect", 20*time.Second)
	cpu0, _ := procCPU(pid)
	self0, _ := procCPU(os.Getpid())
	start := time.Now()
	for i := range gws {
		gw := doc.Gateways[i]
		g := &gwStream{node: &corev3.Node{Id: gw.Name, Cluster: gw.Zone}, done: make(chan struct{})}
		for _, d := range ix.DevicesOf(gw.Name) {
			g.affected = g.affected || affectedClasses[d.Class]
		}
		gws[i] = g
		wg.Add(1)
		go func() { defer wg.Done(); g.run(streamCtx, conns[i/r.perConn]) }()
	}
	windows := "fixed HTTP/2 windows (like Envoy)"
	if r.bdp {
		windows = "grpc-go's dynamic HTTP/2 windows"
	}
	fmt.Printf("%d ADS streams (SotW) over %d gRPC connections with %s, node.id = gateway, node.cluster = zone\n", len(gws), nConns, windows)
	var initial latencies
	if err := waitAll(ctx, gws, 5*time.Minute, func(g *gwStream) (time.Time, bool) {
		return g.initialAt, !g.initialAt.IsZero()
	}, func(at time.Time) { initial = append(initial, at.Sub(start)) }); err != nil {
		return fmt.Errorf("initial configuration: %w", err)
	}
	connected := time.Since(start)
	cpu1, _ := procCPU(pid)
	self1, _ := procCPU(os.Getpid())
	fmt.Printf("every stream ACKed LDS, CDS, RDS and EDS: %v after opening them (per stream: %v)\n", round(connected), initial)
	fmt.Printf("member CPU while they connected: %.2fs (this load tool: %.2fs)\n", (cpu1 - cpu0).Seconds(), (self1 - self0).Seconds())
	if err := prof.wait(); err != nil {
		return err
	}
	if err := r.heapProfile(pprofAddr, "connected"); err != nil {
		return err
	}
	printProc(pid, "member with all streams connected")

	// 3. Flow change: one more path on sensor-telemetry changes the routes
	// of every gateway with a sensor.
	for i := range doc.Flows {
		if doc.Flows[i].Name == changedFlow {
			doc.Flows[i].HTTP.Paths = append(doc.Flows[i].HTTP.Paths, "/api/v2/telemetry")
		}
	}
	if data, err = json.Marshal(doc); err != nil {
		return err
	}
	var affected []*gwStream
	for _, g := range gws {
		if g.affected {
			affected = append(affected, g)
		}
	}
	header(fmt.Sprintf("flow change -> %d affected gateways ACK the new RDS", len(affected)))
	prof = r.profile(pprofAddr, "push", 4*time.Second)
	cpu0, _ = procCPU(pid)
	self0, _ = procCPU(os.Getpid())
	sys0 := procSyscalls(pid)
	sent := time.Now()
	rev, err = api.ApplyTopology(ctx, data)
	if err != nil {
		return fmt.Errorf("apply the flow change: %w", err)
	}
	committed := time.Since(sent)
	var flow latencies
	if err := waitAll(ctx, affected, time.Minute, func(g *gwStream) (time.Time, bool) {
		return g.rdsAckedSince(rev)
	}, func(at time.Time) { flow = append(flow, at.Sub(sent)) }); err != nil {
		return fmt.Errorf("flow change (revision %d): %w", rev, err)
	}
	cpu1, _ = procCPU(pid)
	self1, _ = procCPU(os.Getpid())
	fmt.Printf("PUT committed after %v (revision %d)\n", round(committed), rev)
	fmt.Printf("from sending the PUT until each stream ACKed RDS >= %d: %v\n", rev, flow)
	fmt.Printf("member CPU during the push: %.2fs (this load tool: %.2fs)\n", (cpu1 - cpu0).Seconds(), (self1 - self0).Seconds())
	if sys1 := procSyscalls(pid); sys0.ok && sys1.ok {
		fmt.Printf("member syscalls during the push: %d reads, %d writes\n", sys1.reads-sys0.reads, sys1.writes-sys0.writes)
	}
	if err := prof.wait(); err != nil {
		return err
	}
	if err := r.heapProfile(pprofAddr, "pushed"); err != nil {
		return err
	}
	printProc(pid, "member after the push")

	// 4. Quarantine one device of each of K gateways, one after another.
	header(fmt.Sprintf("quarantine -> the gateway ACKs the RBAC (%d gateways, one device each)", r.quarantines))
	var quar, quarFromAck latencies
	for k := range r.quarantines {
		gi := k * r.gateways / r.quarantines
		g := gws[gi]
		devs := ix.DevicesOf(g.node.Id)
		if len(devs) == 0 {
			return fmt.Errorf("gateway %s has no device", g.node.Id)
		}
		dev := devs[0].Name
		id, ok := ix.SPIFFEID(topology.DeviceSubject(dev))
		if !ok {
			return fmt.Errorf("no SPIFFE ID for device %s", dev)
		}
		ch := g.expect(id)
		sent := time.Now()
		if _, err := api.Quarantine(ctx, topology.KindDevice, dev, "load test"); err != nil {
			return fmt.Errorf("quarantine %s: %w", dev, err)
		}
		answered := time.Now()
		select {
		case at := <-ch:
			quar = append(quar, at.Sub(sent))
			quarFromAck = append(quarFromAck, max(0, at.Sub(answered)))
		case <-time.After(10 * time.Second):
			return fmt.Errorf("gateway %s did not ACK an RDS with the RBAC for %s within 10s of quarantining it", g.node.Id, dev)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	fmt.Printf("from sending the quarantine: %v\n", quar)
	fmt.Printf("from its acknowledgement:    %v\n", quarFromAck)
	printProc(pid, "member at the end")
	var failed int
	for _, g := range gws {
		if g.failed() != nil {
			failed++
		}
	}
	fmt.Printf("streams that ended early: %d of %d\n", failed, len(gws))

	header("targets (docs/architecture.md)")
	fmt.Println("5,000 streams on one node: RSS <= 2 GiB")
	fmt.Println("flow change -> every affected gateway has ACKed: p99 <= 1 s")
	fmt.Println("quarantine -> RBAC ACKed by every affected gateway: p99 <= 250 ms")
	return nil
}

// raiseOpenFiles makes sure this process may open want file descriptors
// (a TLS connection per gateway): Go raises the soft limit to the hard one
// at start; a hard limit below want is an error naming it. The member
// raises its own the same way.
func raiseOpenFiles(want int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= uint64(want) {
		return nil
	}
	if lim.Max < uint64(want) {
		return fmt.Errorf("RLIMIT_NOFILE hard limit %d is below the %d file descriptors the run needs (raise it: ulimit -Hn)", lim.Max, want)
	}
	lim.Cur = uint64(want)
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// phaseProfile is a CPU profile of the member and of this tool over one
// phase of a run (-pprof).
type phaseProfile struct {
	done    chan error
	started time.Time
	d       time.Duration
	self    *os.File
}

// profile starts CPU profiles of the member (over d, which must cover the
// phase: the member's profiler takes whole seconds) and of this process
// (until wait), written to <profiles>/<gateways>-<phase>-{member,tool}.pprof.
// Without -pprof it does nothing.
func (r *xdsRun) profile(addr, phase string, d time.Duration) *phaseProfile {
	if r.profiles == "" {
		return nil
	}
	base := filepath.Join(r.profiles, fmt.Sprintf("%d-%s", r.gateways, phase))
	p := &phaseProfile{done: make(chan error, 1), started: time.Now(), d: d}
	go func() {
		url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Seconds()))
		resp, err := http.Get(url)
		if err != nil {
			p.done <- err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			p.done <- fmt.Errorf("%s: %s", url, resp.Status)
			return
		}
		f, err := os.Create(base + "-member.pprof")
		if err != nil {
			p.done <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		p.done <- errors.Join(err, f.Close())
	}()
	if f, err := os.Create(base + "-tool.pprof"); err == nil && pprof.StartCPUProfile(f) == nil {
		p.self = f
	}
	time.Sleep(50 * time.Millisecond) // let the member's profile begin first
	return p
}

// heapProfile writes the member's heap profile (in use and allocated,
// after a GC) to <profiles>/<gateways>-heap-<when>.pprof and prints how
// many goroutines it runs (-pprof).
func (r *xdsRun) heapProfile(addr, when string) error {
	if r.profiles == "" {
		return nil
	}
	resp, err := http.Get("http://" + addr + "/debug/pprof/heap?gc=1")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(filepath.Join(r.profiles, fmt.Sprintf("%d-heap-%s.pprof", r.gateways, when)))
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	if err := errors.Join(err, f.Close()); err != nil {
		return err
	}
	g, err := http.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return err
	}
	defer g.Body.Close()
	head, err := io.ReadAll(io.LimitReader(g.Body, 256))
	if err != nil {
		return err
	}
	first, _, _ := strings.Cut(string(head), "\n") // "goroutine profile: total N"
	fmt.Printf("member %s (%s)\n", first, when)
	return nil
}

// wait stops this tool's profile and waits for the member's, so that the
// next phase does not run into it.
func (p *phaseProfile) wait() error {
	if p == nil {
		return nil
	}
	if p.self != nil {
		pprof.StopCPUProfile()
		p.self.Close()
	}
	if left := time.Until(p.started.Add(p.d)); left > 0 {
		fmt.Printf("(waiting %v for the member's CPU profile)\n", round(left))
	}
	return <-p.done
}

// waitAll polls streams until done reports each of them done, collecting
// the time it reports for each; it fails when a stream ended or after d.
func waitAll(ctx context.Context, streams []*gwStream, d time.Duration, done func(*gwStream) (time.Time, bool), collect func(time.Time)) error {
	deadline := time.Now().Add(d)
	pending := slices.Clone(streams)
	for {
		rest := pending[:0]
		for _, g := range pending {
			g.mu.Lock()
			at, ok := done(g)
			g.mu.Unlock()
			switch {
			case ok:
				collect(at)
			case g.failed() != nil:
				return fmt.Errorf("stream of %s: %w", g.node.Id, g.failed())
			default:
				rest = append(rest, g)
			}
		}
		pending = rest
		if len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d streams not done after %v (e.g. %s)", len(pending), len(streams), d, pending[0].node.Id)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

type ackRecord struct {
	version uint64
	at      time.Time
}

// gwStream plays one gateway's Envoy on an ADS stream: LDS and CDS
// wildcard, then RDS for the listener's route configuration and EDS for
// the EDS clusters, ACKing every response.
type gwStream struct {
	node     *corev3.Node
	affected bool // has a device the changed flow starts from
	done     chan struct{}
	err      atomic.Pointer[error]

	mu        sync.Mutex // guards the fields below
	acked     map[string]bool
	initialAt time.Time   // every subscribed type ACKed once
	rdsAcks   []ackRecord // every RDS ACK
	watchID   string      // a SPIFFE ID awaited in the RBAC
	watchCh   chan time.Time
}

func (g *gwStream) failed() error {
	if p := g.err.Load(); p != nil {
		return *p
	}
	return nil
}

// rdsAckedSince is the time of the first RDS ACK of a version >= rev;
// callers hold g.mu.
func (g *gwStream) rdsAckedSince(rev topology.Revision) (time.Time, bool) {
	for _, a := range g.rdsAcks {
		if a.version >= uint64(rev) {
			return a.at, true
		}
	}
	return time.Time{}, false
}

// expect arms the stream to report the time it ACKs a route configuration
// whose every virtual host denies id.
func (g *gwStream) expect(id string) <-chan time.Time {
	ch := make(chan time.Time, 1)
	g.mu.Lock()
	g.watchID, g.watchCh = id, ch
	g.mu.Unlock()
	return ch
}

type typeState struct {
	names          []string // requested names (nil: wildcard)
	version, nonce string   // of the last response
}

func (g *gwStream) run(ctx context.Context, conn *grpc.ClientConn) {
	err := g.stream(ctx, conn)
	if err != nil && ctx.Err() == nil {
		g.err.Store(&err)
	}
}

func (g *gwStream) stream(ctx context.Context, conn *grpc.ClientConn) error {
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	types := map[string]*typeState{}
	send := func(typeURL string) error {
		ts := types[typeURL]
		return st.Send(&discoverygrpc.DiscoveryRequest{Node: g.node, TypeUrl: typeURL,
			ResourceNames: ts.names, VersionInfo: ts.version, ResponseNonce: ts.nonce})
	}
	// subscribe asks for names of typeURL unless exactly those are asked.
	subscribe := func(typeURL string, names []string) error {
		if ts, ok := types[typeURL]; ok && slices.Equal(ts.names, names) {
			return nil
		}
		if types[typeURL] == nil {
			types[typeURL] = &typeState{}
		}
		types[typeURL].names = names
		return send(typeURL)
	}
	for _, t := range []string{ldsType, cdsType} {
		if err := subscribe(t, nil); err != nil {
			return err
		}
	}
	g.mu.Lock()
	g.acked = map[string]bool{}
	g.mu.Unlock()
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		ts := types[resp.GetTypeUrl()]
		if ts == nil {
			return fmt.Errorf("unrequested type %s", resp.GetTypeUrl())
		}
		var rbacFor map[string]bool
		switch resp.GetTypeUrl() {
		case ldsType: // like Envoy, subscribe to the new routes before ACKing
			names, err := routeNames(resp)
			if err != nil {
				return err
			}
			if err := subscribe(rdsType, names); err != nil {
				return err
			}
		case cdsType:
			names, err := edsNames(resp)
			if err != nil {
				return err
			}
			if len(names) > 0 {
				if err := subscribe(edsType, names); err != nil {
					return err
				}
			}
		case rdsType:
			g.mu.Lock()
			watching := g.watchID
			g.mu.Unlock()
			if watching != "" {
				if rbacFor, err = quarantinedIDs(resp); err != nil {
					return err
				}
			}
		}
		ts.version, ts.nonce = resp.GetVersionInfo(), resp.GetNonce()
		if err := send(resp.GetTypeUrl()); err != nil {
			return err
		}
		now := time.Now()
		g.mu.Lock()
		g.acked[resp.GetTypeUrl()] = true
		if g.initialAt.IsZero() && len(g.acked) == len(types) && g.acked[rdsType] && (g.acked[edsType] || types[edsType] == nil) {
			g.initialAt = now
		}
		if resp.GetTypeUrl() == rdsType {
			v, err := strconv.ParseUint(resp.GetVersionInfo(), 10, 64)
			if err != nil {
				g.mu.Unlock()
				return fmt.Errorf("RDS version %q is not a revision", resp.GetVersionInfo())
			}
			g.rdsAcks = append(g.rdsAcks, ackRecord{v, now})
			if g.watchID != "" && rbacFor[g.watchID] {
				g.watchCh <- now
				g.watchID, g.watchCh = "", nil
			}
		}
		g.mu.Unlock()
	}
}

// The resources are read with protowire rather than their generated types:
// the packages of Listener, Cluster and RouteConfiguration import CEL
// modules that this module does not require (and may not add here). The
// field numbers are those of the envoy v3 protos.

// field returns the values of the length-delimited field num of message b
// (every occurrence: repeated fields and map entries); ok is false when b
// does not parse.
func field(b []byte, num protowire.Number) (vals [][]byte, ok bool) {
	for len(b) > 0 {
		n0, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		if typ == protowire.BytesType && n0 == num {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, false
			}
			vals = append(vals, v)
			b = b[n:]
			continue
		}
		if n = protowire.ConsumeFieldValue(n0, typ, b); n < 0 {
			return nil, false
		}
		b = b[n:]
	}
	return vals, true
}

// path follows length-delimited fields nums from message b and returns the
// values at the end.
func path(b []byte, nums ...protowire.Number) ([][]byte, error) {
	cur := [][]byte{b}
	for _, num := range nums {
		var next [][]byte
		for _, m := range cur {
			vals, ok := field(m, num)
			if !ok {
				return nil, errors.New("malformed xDS resource")
			}
			next = append(next, vals...)
		}
		cur = next
	}
	return cur, nil
}

func varintField(b []byte, num protowire.Number) (uint64, bool) {
	for len(b) > 0 {
		n0, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, false
		}
		b = b[n:]
		if typ == protowire.VarintType && n0 == num {
			v, n := protowire.ConsumeVarint(b)
			return v, n >= 0
		}
		if n = protowire.ConsumeFieldValue(n0, typ, b); n < 0 {
			return 0, false
		}
		b = b[n:]
	}
	return 0, false
}

// routeNames lists the RDS route configurations the listeners name:
// Listener.filter_chains(3).filters(3).typed_config(4) Any.value(2)
// HttpConnectionManager.rds(3).route_config_name(2).
func routeNames(resp *discoverygrpc.DiscoveryResponse) ([]string, error) {
	var names []string
	for _, a := range resp.GetResources() {
		vals, err := path(a.GetValue(), 3, 3, 4, 2, 3, 2)
		if err != nil {
			return nil, err
		}
		for _, v := range vals {
			if n := string(v); !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return names, nil
}

// edsNames lists the EDS service names of the EDS clusters:
// Cluster.type(2) == EDS(3), eds_cluster_config(3).service_name(2), or the
// cluster's name(1).
func edsNames(resp *discoverygrpc.DiscoveryResponse) ([]string, error) {
	var names []string
	for _, a := range resp.GetResources() {
		b := a.GetValue()
		if t, ok := varintField(b, 2); !ok || t != 3 {
			continue
		}
		svc, err := path(b, 3, 2)
		if err != nil {
			return nil, err
		}
		if len(svc) == 0 || len(svc[0]) == 0 {
			if svc, err = path(b, 1); err != nil || len(svc) == 0 {
				return nil, errors.New("EDS cluster without a name")
			}
		}
		names = append(names, string(svc[0]))
	}
	slices.Sort(names)
	return names, nil
}

// quarantinedIDs returns the SPIFFE IDs the quarantine RBAC denies on every
// virtual host of the route configurations: RouteConfiguration
// .virtual_hosts(2).typed_per_filter_config(15) map entries with key(1) the
// RBAC filter and value(2) an Any of RBACPerRoute. Every spiffe:// string
// anywhere in the RBACPerRoute is a principal (the policy's only other
// string is its name).
func quarantinedIDs(resp *discoverygrpc.DiscoveryResponse) (map[string]bool, error) {
	counts := map[string]int{}
	hosts := 0
	for _, a := range resp.GetResources() {
		vhs, err := path(a.GetValue(), 2)
		if err != nil {
			return nil, err
		}
		for _, vh := range vhs {
			hosts++
			entries, err := path(vh, 15)
			if err != nil {
				return nil, err
			}
			seen := map[string]bool{}
			for _, e := range entries {
				key, err1 := path(e, 1)
				typ, err2 := path(e, 2, 1)
				val, err3 := path(e, 2, 2)
				if err := errors.Join(err1, err2, err3); err != nil {
					return nil, err
				}
				if len(key) != 1 || string(key[0]) != rbacFilter {
					continue
				}
				if len(typ) != 1 || string(typ[0]) != rbacPerType || len(val) != 1 {
					return nil, fmt.Errorf("RBAC per-route config is not a %s", rbacPerType)
				}
				spiffeStrings(val[0], 0, seen)
			}
			for id := range seen {
				counts[id]++
			}
		}
	}
	out := map[string]bool{}
	for id, n := range counts {
		if n == hosts {
			out[id] = true
		}
	}
	return out, nil
}

// spiffeStrings adds to out every length-delimited field of the message b,
// at any depth, that is a spiffe:// URI.
func spiffeStrings(b []byte, depth int, out map[string]bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return
		}
		b = b[n:]
		if typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return
			}
			b = b[n:]
			if bytes.HasPrefix(v, []byte("spiffe://")) {
				out[string(v)] = true
			} else if depth < 20 {
				spiffeStrings(v, depth+1, out) // maybe a message; a string parses harmlessly
			}
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return
		}
		b = b[n:]
	}
}

// procCPU is a process's user+system CPU time from /proc/<pid>/stat
// (fields 14 and 15, in USER_HZ = 100 ticks per second on Linux).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// syscalls counts a process's read and write system calls (syscr and
// syscw of /proc/<pid>/io).
type syscalls struct {
	reads, writes int64
	ok            bool
}

func procSyscalls(pid int) syscalls {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return syscalls{}
	}
	var out syscalls
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch {
		case err != nil:
		case k == "syscr":
			out.reads, out.ok = n, true
		case k == "syscw":
			out.writes = n
		}
	}
	return out
}

// printProc prints a process's RSS (and peak) and CPU time so far.
func printProc(pid int, what string) {
	rss, peak, err := harness.ProcMemory(pid)
	cpu, err2 := procCPU(pid)
	if err != nil || err2 != nil {
		fmt.Printf("%s: cannot read /proc: %v\n", what, errors.Join(err, err2))
		return
	}
	self, _ := procCPU(os.Getpid())
	fmt.Printf("%s: RSS %s (peak %s), CPU time %.2fs since start (this load tool: %.2fs)\n",
		what, mib(rss), mib(peak), cpu.Seconds(), self.Seconds())
}
