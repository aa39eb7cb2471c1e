package e2e_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/spiretpm"
	"github.com/vigil-iot/vigil/internal/swtpmtest"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/topology"
)

var (
	benchTPMGateways = flag.Int("tpm-gateways", 64, "gateways attesting in BenchmarkSPIRETPMAttest")
	benchTPMClients  = flag.Int("tpm-clients", 8, "concurrent attestations in BenchmarkSPIRETPMAttest")
	benchTPMFor      = flag.Duration("tpm-for", 20*time.Second, "how long BenchmarkSPIRETPMAttest attests")
)

// tpmBenchDoc has n gateways of a class that onboards with vigil_tpm
// (mode), and gw-token, which joins with a token.
func tpmBenchDoc(n int, mode string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: vigil/v1
trustDomain: city.example
zones: [{name: north}]
gateways:
  - {name: gw-token, zone: north}
`)
	for i := range n {
		fmt.Fprintf(&b, "  - {name: gw-%d, zone: north, class: edge-gw}\n", i)
	}
	fmt.Fprintf(&b, `deviceClasses:
  - name: edge-gw
    attestation:
      maxAge: 1h
      formats: [tpm2-quote]
      spire: %s
      firmware: [{version: 5.0.0, sha256: %s}]
`, mode, tpmFW500)
	return b.String()
}

// BenchmarkSPIRETPMAttest measures node attestations per second through
// one spire-server with the vigil_tpm plugin and a 3-member Vigil cluster
// verifying and recording each (the plugin's two HTTP calls, the quote's
// verification, a Raft write): -tpm-clients agents attest concurrently,
// round-robin over -tpm-gateways gateways with simulated TPMs (attest.SimTPM:
// the quotes are real TPM 2.0 structures signed with ECDSA P-256), for
// -tpm-for.
//
//	go test ./e2e -run '^$' -bench SPIRETPMAttest -benchtime=1x
func BenchmarkSPIRETPMAttest(b *testing.B) {
	n := *benchTPMGateways
	w := startTPMWorld(b, tpmBenchDoc(n, topology.SPIREOnboard))
	b.Log(harness.Hardware())
	ctx := context.Background()
	tpms := make([]*attest.SimTPM, n)
	fw, _ := hex.DecodeString(tpmFW500)
	for i := range tpms {
		tpm, err := attest.NewSimTPM(false)
		if err != nil {
			b.Fatal(err)
		}
		tpm.Extend(16, fw, attest.EventFirmware)
		ak, _ := tpm.AKPublicPEM()
		if _, err := w.c.Client(i%w.c.Size()).EnrollGateway(ctx, fmt.Sprintf("gw-%d", i), api.EnrollRequest{TPMAK: string(ak)}); err != nil {
			b.Fatal(err)
		}
		tpms[i] = tpm
	}
	r := newRogueAgent(b, w.srv)
	one := func(i int) (time.Duration, error) {
		s := topology.GatewaySubject(fmt.Sprintf("gw-%d", i))
		ak, _ := tpms[i].AKPublicPEM()
		start := time.Now()
		res, err := r.attest(tpmPayload(s, ak), func(ch *spiretpm.Challenge) []byte {
			nonce, _ := hex.DecodeString(ch.Nonce)
			ev, err := tpms[i].Evidence(nonce, ch.PCRs)
			if err != nil {
				return nil
			}
			data, _ := json.Marshal(ev)
			return data
		})
		if err == nil && res.GetSvid().GetId().GetPath() != "/spire/agent/vigil_tpm/gateway/"+s.Name {
			err = fmt.Errorf("agent SVID %v", res.GetSvid().GetId())
		}
		return time.Since(start), err
	}
	// Warm up: every gateway attests once (SPIRE creates its node).
	for i := range n {
		if _, err := one(i); err != nil {
			b.Fatalf("gw-%d: %v", i, err)
		}
	}
	b.ResetTimer()
	for range b.N {
		var next atomic.Int64
		var mu sync.Mutex
		var lat []time.Duration
		var failed []error
		cpu0 := cpuByProgram()
		deadline := time.Now().Add(*benchTPMFor)
		start := time.Now()
		var wg sync.WaitGroup
		for range *benchTPMClients {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					d, err := one(int(next.Add(1)) % n)
					mu.Lock()
					if err != nil {
						failed = append(failed, err)
					} else {
						lat = append(lat, d)
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		el := time.Since(start)
		cpu1 := cpuByProgram()
		var cpu []string
		for _, prog := range []string{"spire-server", "vigil-tpm-attestor-server", "vigil", "e2e.test"} {
			cpu = append(cpu, fmt.Sprintf("%s %.0f%%", prog, 100*(cpu1[prog]-cpu0[prog])/el.Seconds()))
		}
		b.Logf("CPU (of one core) while attesting: %s", strings.Join(cpu, ", "))
		if len(failed) > 0 {
			b.Fatalf("%d of %d attestations failed; first: %v", len(failed), len(failed)+len(lat), failed[0])
		}
		slices.Sort(lat)
		p := func(q float64) time.Duration {
			return lat[min(len(lat)-1, int(q*float64(len(lat))))].Round(100 * time.Microsecond)
		}
		b.Logf("%d attestations of %d gateways, %d at a time, in %v: %.1f/s; latency p50 %v, p99 %v, max %v",
			len(lat), n, *benchTPMClients, el.Round(time.Millisecond), float64(len(lat))/el.Seconds(), p(0.5), p(0.99), lat[len(lat)-1])
		b.ReportMetric(float64(len(lat))/el.Seconds(), "attestations/s")
		b.ReportMetric(float64(p(0.5).Microseconds())/1000, "ms-p50")
		b.ReportMetric(float64(p(0.99).Microseconds())/1000, "ms-p99")
	}
}

// BenchmarkSPIRETPMFirstSVID measures, with the real spire-agent and swtpm,
// the time from starting an agent (fresh data dir) to its Workload API
// serving the gateway's own X509-SVID: with vigil_tpm in both modes
// (required waits for SPIRE's entry cache to see the node alias), and
// with a join token for comparison.
//
//	go test ./e2e -run '^$' -bench SPIRETPMFirstSVID -benchtime=1x
func BenchmarkSPIRETPMFirstSVID(b *testing.B) {
	for _, mode := range []string{topology.SPIREOnboard, topology.SPIRERequired} {
		b.Run("mode="+mode, func(b *testing.B) {
			w := startTPMWorld(b, tpmBenchDoc(1, mode))
			b.Log(harness.Hardware())
			g := w.benchGateway(b, "gw-0")
			var tpmTimes, tokenTimes []time.Duration
			for range b.N * 5 {
				tpmTimes = append(tpmTimes, w.firstSVID(b, "gw-0", w.agentValues(g)))
				var tok spire.Token
				if err := w.c.Client(0).JoinToken(context.Background(), topology.KindGateway, "gw-token", 10*time.Minute, &tok); err != nil {
					b.Fatal(err)
				}
				tokenTimes = append(tokenTimes, w.firstSVID(b, "gw-token", nil, "-joinToken", tok.Token))
			}
			med := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2].Round(time.Millisecond) }
			b.Logf("agent start -> the gateway's X509-SVID on its Workload API, %d runs: vigil_tpm (%s) median %v (min %v, max %v); join token median %v (min %v, max %v)",
				len(tpmTimes), mode, med(tpmTimes), tpmTimes[0].Round(time.Millisecond), tpmTimes[len(tpmTimes)-1].Round(time.Millisecond),
				med(tokenTimes), tokenTimes[0].Round(time.Millisecond), tokenTimes[len(tokenTimes)-1].Round(time.Millisecond))
			b.ReportMetric(float64(med(tpmTimes).Milliseconds()), "ms-vigil_tpm")
			b.ReportMetric(float64(med(tokenTimes).Milliseconds()), "ms-join_token")
		})
	}
}

// benchGateway is w.gateway without the CLI: a swtpm with an AK made by
// the plugin's own TPM client and measured firmware 5.0.0, enrolled.
func (w *tpmWorld) benchGateway(b *testing.B, name string) *tpmGateway {
	g := &tpmGateway{attestTPM: &attestTPM{name: name, TPM: swtpmtest.Start(b, swtpmtest.Flags("not-need-init,startup-clear"))}, name: name}
	out, err := exec.Command(vigilBin, "attest", "tpm", "ak-public", "--tpm", g.spec(), "--ak-handle", tpmAKHandle).Output()
	if err != nil {
		b.Fatalf("ak-public: %v", err)
	}
	if _, err := w.c.Client(0).EnrollGateway(context.Background(), name, api.EnrollRequest{TPMAK: string(out)}); err != nil {
		b.Fatal(err)
	}
	if out, err := g.Run("tpm2_pcrextend", "16:sha256="+tpmFW500); err != nil {
		b.Fatalf("pcrextend: %v\n%s", err, out)
	}
	g.events = g.path("events.json")
	os.WriteFile(g.events, fmt.Appendf(nil, `[{"pcr": 16, "sha256": %q, "type": "firmware"}]`, tpmFW500), 0o600)
	return g
}

// firstSVID starts an agent with a fresh data dir (vigil_tpm when values
// are given, else agent.conf with args) and times its start to the first
// X509-SVID of gateway on its Workload API; the agent is stopped after.
func (w *tpmWorld) firstSVID(b *testing.B, gateway string, values map[string]string, args ...string) time.Duration {
	b.Helper()
	tmpl := "agent-vigil-tpm.conf"
	if values == nil {
		tmpl = "agent.conf"
	}
	a, err := w.srv.NewAgent("", tmpl, values, args...)
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(a.Dir)
	start := time.Now()
	if err := a.Restart(); err != nil {
		b.Fatal(err)
	}
	defer a.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	want := "spiffe://city.example/zone/north/gateway/" + gateway
	for {
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+a.WorkloadSocket))
		if err == nil && svid.ID.String() == want {
			return time.Since(start)
		}
		if ctx.Err() != nil {
			b.Fatalf("no X509-SVID for %s within 60s: %v", want, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cpuByProgram sums the CPU time (user and system, seconds) of this
// machine's processes by program name (the base name of argv[0]): a
// reading before and after a run tells where the cores went.
func cpuByProgram() map[string]float64 {
	out := map[string]float64{}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + d.Name() + "/cmdline")
		if err != nil || len(cmd) == 0 {
			continue
		}
		prog := filepath.Base(strings.SplitN(string(cmd), "\x00", 2)[0])
		stat, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command's closing parenthesis: state is 3,
		// utime 14 and stime 15 (proc(5)).
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		out[prog] += (u + st) / 100 // USER_HZ
	}
	return out
}
