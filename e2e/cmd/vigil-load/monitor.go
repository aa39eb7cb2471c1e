package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vigil-iot/vigil/authz/authztest"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// runMonitor measures the monitor: what it costs the authorizer (checks/s
// with the monitor off and on, alternating, on one member), how many
// events a member ingests (decisions and access-log entries together),
// and how long an anomaly takes to be quarantined on every member of a
// 3-member cluster.
func runMonitor(args []string) error {
	fs := flag.NewFlagSet("monitor", flag.ExitOnError)
	duration := fs.Duration("duration", 10*time.Second, "length of each throughput run")
	rounds := fs.Int("rounds", 2, "off/on pairs of throughput runs")
	inflight := fs.Int("inflight", 16, "checks in flight")
	alsStreams := fs.Int("als-streams", 4, "gateways streaming access logs during the ingest run")
	devices := fs.Int("devices", 100_000, "devices in the topology")
	trials := fs.Int("trials", 40, "anomalies to time on the 3-member cluster")
	bin, dir, err := setup(fs, args)
	defer os.RemoveAll(dir)
	if err != nil {
		return err
	}
	doc := topologytest.Generate(topologytest.Spec{Zones: 10, GatewaysPerZone: 10, Devices: *devices, NoAttestation: true})
	// A benign fleet: allowed requests at a steady rate, no rate limit in
	// the way. The monitor's cost to a city is its cost on such traffic;
	// an attack's (Raft writes, playbooks) comes on top, briefly.
	for i := range doc.DeviceClasses {
		doc.DeviceClasses[i].RateLimit = ""
	}
	for i := range doc.Flows {
		doc.Flows[i].RateLimit = ""
	}

	header(fmt.Sprintf("ext_authz with the monitor off and on (1 member, %d devices, %d in flight, %v per run, alternating)", *devices, *inflight, *duration))
	var off, on, cpuOff, cpuOn []float64
	for r := range *rounds {
		for _, monitor := range []bool{false, true} {
			rate, err := checkRate(bin, filepath.Join(dir, fmt.Sprintf("rate-%d-%v", r, monitor)), doc, *devices, *inflight, *duration, monitor, 0)
			if err != nil {
				return err
			}
			if monitor {
				on = append(on, rate.checks)
			} else {
				off = append(off, rate.checks)
			}
			fmt.Printf("round %d monitor=%-5v %8.0f checks/s, member CPU %5.1f µs/check, judged %8.0f events/s, dropped %d\n",
				r+1, monitor, rate.checks, rate.cpuPerCheck, rate.judged, rate.dropped)
			if monitor {
				cpuOn = append(cpuOn, rate.cpuPerCheck)
			} else {
				cpuOff = append(cpuOff, rate.cpuPerCheck)
			}
		}
	}
	mOff, mOn := mean(off), mean(on)
	fmt.Printf("mean: off %.0f checks/s, on %.0f checks/s: throughput %+.1f%%; member CPU per check off %.1f µs, on %.1f µs: %+.1f%%\n",
		mOff, mOn, 100*(mOn-mOff)/mOff, mean(cpuOff), mean(cpuOn), 100*(mean(cpuOn)-mean(cpuOff))/mean(cpuOff))

	header(fmt.Sprintf("ingest: checks plus %d gateways' access logs at full speed (1 member)", *alsStreams))
	rate, err := checkRate(bin, filepath.Join(dir, "ingest"), doc, *devices, *inflight, *duration, true, *alsStreams)
	if err != nil {
		return err
	}
	fmt.Printf("%.0f checks/s + %.0f access-log entries/s; the member judged %.0f events/s, dropped %d\n", rate.checks, rate.als, rate.judged, rate.dropped)

	header(fmt.Sprintf("anomaly → quarantined on every member (3 members, %d trials: a 12-destination scan spread over the members)", *trials))
	return quarantineLatency(bin, filepath.Join(dir, "latency"), doc, *devices, *trials)
}

func mean(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(max(len(xs), 1))
}

type rates struct {
	checks, als, judged, cpuPerCheck float64
	dropped                          uint64
}

// monitorStats reads the member's monitor counters from GET /v1/node.
func monitorStats(c *harness.Cluster, i int) (judged, dropped uint64) {
	st, err := c.Client(i).Node(context.Background())
	if err != nil {
		return 0, 0
	}
	parts, _ := st["parts"].(map[string]any)
	b, _ := json.Marshal(parts["monitor"])
	var m struct {
		Judged    uint64 `json:"judged"`
		Dropped   uint64 `json:"dropped"`
		Forwarded uint64 `json:"forwarded"`
	}
	json.Unmarshal(b, &m)
	return m.Judged + m.Forwarded, m.Dropped
}

func checkRate(bin, dir string, doc *topology.Document, devices, inflight int, d time.Duration, monitor bool, alsStreams int) (rates, error) {
	args := []string{"--decision-log", filepath.Join(dir, "decisions.log"), fmt.Sprintf("--monitor=%v", monitor)}
	c, err := startCluster(bin, filepath.Join(dir, "cluster"), harness.Options{Members: 1, Args: args})
	if err != nil {
		return rates{}, err
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ix, err := applyDocument(ctx, c, doc)
	if err != nil {
		return rates{}, err
	}
	var reqs []*authv3.CheckRequest
	for i, r := range authztest.Requests(ix, devices, devices) {
		if i%2 == 0 { // the allowed half
			reqs = append(reqs, r)
		}
	}
	cc, err := grpc.NewClient(c.Member(0).AuthzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return rates{}, err
	}
	defer cc.Close()
	cl := authv3.NewAuthorizationClient(cc)
	for _, r := range reqs { // the decision cache and the baselines have seen the fleet once
		cl.Check(ctx, r)
	}
	j0, _ := monitorStats(c, 0)
	cpu0, _ := procCPU(c.PID(0))
	var checks, als atomic.Uint64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := range inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; time.Now().Before(deadline); i += inflight {
				if _, err := cl.Check(ctx, reqs[i%len(reqs)]); err == nil {
					checks.Add(1)
				}
			}
		}()
	}
	for g := range alsStreams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			xc, err := grpc.NewClient(c.Member(0).XDSAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return
			}
			defer xc.Close()
			sctx, scancel := context.WithDeadline(ctx, deadline.Add(time.Second))
			defer scancel()
			st, err := alsv3.NewAccessLogServiceClient(xc).StreamAccessLogs(sctx)
			if err != nil {
				return
			}
			gw := topologytest.GatewayName(g)
			zone, _ := ix.ZoneOf(topology.GatewaySubject(gw))
			id := &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: gw, Cluster: zone}, LogName: "vigil"}
			batch := make([]*accesslogdatav3.HTTPAccessLogEntry, 100)
			for k := 0; time.Now().Before(deadline); k++ {
				for e := range batch {
					r := reqs[(k*100+e+g*7919)%len(reqs)]
					batch[e] = &accesslogdatav3.HTTPAccessLogEntry{
						CommonProperties: &accesslogdatav3.AccessLogCommon{StartTime: timestamppb.Now(),
							TlsProperties: &accesslogdatav3.TLSProperties{PeerCertificateProperties: &accesslogdatav3.TLSProperties_CertificateProperties{
								SubjectAltName: []*accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName{
									{San: &accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: r.GetAttributes().GetSource().GetPrincipal()}}}}}},
						Request: &accesslogdatav3.HTTPRequestProperties{RequestMethod: corev3.RequestMethod_POST, Authority: "telemetry.city.example",
							Path: "/api/v1/telemetry", RequestBodyBytes: 200, RequestHeadersBytes: 100},
						Response: &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200), ResponseBodyBytes: 20},
					}
				}
				msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
					HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch}}}
				if k == 0 {
					msg.Identifier = id
				}
				if err := st.Send(msg); err != nil {
					return
				}
				als.Add(uint64(len(batch)))
			}
			st.CloseAndRecv()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, _ := procCPU(c.PID(0))
	time.Sleep(500 * time.Millisecond) // let the queue drain into the counters
	j1, dropped := monitorStats(c, 0)
	return rates{checks: float64(checks.Load()) / elapsed.Seconds(), als: float64(als.Load()) / elapsed.Seconds(),
		judged: float64(j1-j0) / elapsed.Seconds(), dropped: dropped,
		cpuPerCheck: float64((cpu1 - cpu0).Microseconds()) / float64(max(checks.Load(), 1))}, nil
}

func quarantineLatency(bin, dir string, doc *topology.Document, devices, trials int) error {
	c, err := startCluster(bin, filepath.Join(dir, "cluster"), harness.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()
	ix, err := applyDocument(ctx, c, doc)
	if err != nil {
		return err
	}
	clients := make([]authv3.AuthorizationClient, c.Size())
	for i := range clients {
		cc, err := grpc.NewClient(c.Member(i).AuthzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer cc.Close()
		clients[i] = authv3.NewAuthorizationClient(cc)
	}
	check := func(cl authv3.AuthorizationClient, id, host, path string) (bool, error) {
		resp, err := cl.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: id},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "POST", Path: path, Host: host}}}})
		if err != nil {
			return false, err
		}
		return resp.GetStatus().GetCode() == 0, nil
	}
	var lat latencies
	for k := range trials {
		name := topologytest.DeviceName((k * 3 * 131) % devices) // street lights: a flow to telemetry
		id, _ := ix.SPIFFEID(topology.DeviceSubject(name))
		for i, cl := range clients {
			if ok, err := check(cl, id, "telemetry.city.example", "/api/v1/telemetry"); err != nil || !ok {
				return fmt.Errorf("trial %d: %s does not allow %s before the scan: %v", k, c.Member(i).ID, name, err)
			}
		}
		start := time.Now()
		for j := range 12 {
			if _, err := check(clients[j%len(clients)], id, fmt.Sprintf("10.66.%d.%d", k, j), "/"); err != nil {
				return err
			}
		}
		var worst time.Duration
		for i, cl := range clients {
			for {
				ok, err := check(cl, id, "telemetry.city.example", "/api/v1/telemetry")
				if err == nil && !ok {
					break
				}
				if time.Since(start) > 10*time.Second {
					return fmt.Errorf("trial %d: %s still allows %s 10s after its scan", k, c.Member(i).ID, name)
				}
				time.Sleep(2 * time.Millisecond)
			}
			worst = max(worst, time.Since(start))
		}
		lat = append(lat, worst)
	}
	fmt.Printf("first scan request → the last member denies: %v\n", lat)
	return nil
}
