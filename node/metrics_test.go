package node

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/spire/spiretest"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// scrape is GET /metrics of n, without a token.
func scrape(t *testing.T, n *Node) string {
	t.Helper()
	resp, err := http.Get("http://" + n.APIAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	return string(body)
}

// lint fails the test on promlint's problems with vigil_ metrics.
func lint(t *testing.T, text string) {
	t.Helper()
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "vigil_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

// value is the sample of series (name with its labels, as served), or -1.
func value(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// ruleMetrics are the metrics the shipped alert rules use.
func ruleMetrics(t *testing.T) []string {
	t.Helper()
	rules, err := os.ReadFile("../examples/prometheus/vigil-rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	return regexp.MustCompile(`vigil_[a-z_]+`).FindAllString(string(rules), -1)
}

// described are the names of the metrics c describes.
func described(c prometheus.Collector) map[string]bool {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	out := map[string]bool{}
	re := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		if m := re.FindStringSubmatch(d.String()); m != nil {
			out[m[1]] = true
		}
	}
	return out
}

// TestMetrics scrapes GET /metrics without a token after some decisions:
// the member's figures are there, lint-clean (names, help texts, units),
// and nothing names a device, gateway or service.
func TestMetrics(t *testing.T) {
	n, cl, _ := runNode(t, nil)
	ctx := context.Background()
	if _, err := cl.ApplyTopology(ctx, []byte(monitorDoc("ops"))); err != nil {
		t.Fatal(err)
	}
	c := newChecker(t, n.AuthzAddr())
	c.check("north", "sen-1", "POST", "telemetry.city.example", "/t")
	c.check("north", "sen-1", "GET", "telemetry.city.example", "/nope")
	text := scrape(t, n)
	for _, want := range []string{
		`vigil_member_ready 1`,
		`vigil_raft_state{state="leader"} 1`,
		`vigil_authz_decisions_total{cause="none",result="allow"} 1`,
		`vigil_authz_decisions_total{cause="no-flow",result="deny"} 1`,
		`vigil_authz_decision_duration_seconds_count 2`,
		`vigil_decision_log_dropped_total 0`,
		`vigil_data_dir_full 0`,
		`vigil_data_dir_free_bytes `,
		`vigil_xds_proxies_connected 0`,
		`vigil_monitor_events_judged_total`,
		`vigil_incidents{status="open"} 0`,
		`vigil_raft_leader_changes_total 1`,
		`vigil_raft_commit_duration_seconds_bucket`,
		`vigil_raft_apply_duration_seconds_bucket`,
		`vigil_xds_pushes_total{type="lds"} 0`,
		`vigil_xds_nacks_total{type="cds"} 0`,
		`vigil_xds_push_duration_seconds_count{type="rds"} 0`,
		`vigil_attestation_results_total{format="eat",status="failed"} 0`,
		`vigil_attestation_replays_refused_total 0`,
		`vigil_attestation_verify_duration_seconds_count{format="dice"} 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	for _, name := range []string{"sen-1", "gw-1", "telemetry"} {
		if strings.Contains(text, name) {
			t.Errorf("/metrics names %q: no label may name a device, gateway or service", name)
		}
	}
	// The ApplyTopology above was committed through this leader.
	if v := value(text, "vigil_raft_commit_duration_seconds_count"); v < 1 {
		t.Errorf("vigil_raft_commit_duration_seconds_count = %v after a write", v)
	}
	if v := value(text, "vigil_raft_apply_duration_seconds_count"); v < 1 {
		t.Errorf("vigil_raft_apply_duration_seconds_count = %v after a write", v)
	}
	if strings.Contains(text, "vigil_spire_") {
		t.Error("/metrics serves SPIRE figures with the integration off")
	}
	// Every metric the shipped alert rules use is one the member serves
	// (the SPIRE ones with the integration on: TestMetricsOfSPIRE serves
	// them; here they must at least be the SPIRE collector's).
	spireNames := described(newSPIRECollector(nil))
	for _, name := range ruleMetrics(t) {
		if strings.HasPrefix(name, "vigil_spire_") {
			if !spireNames[name] {
				t.Errorf("examples/prometheus/vigil-rules.yml uses %s, which the SPIRE collector does not describe", name)
			}
		} else if !strings.Contains(text, name) {
			t.Errorf("examples/prometheus/vigil-rules.yml uses %s, which /metrics does not serve", name)
		}
	}
	lint(t, text)
}

// TestMetricsOfAttestationAndXDS: an attestation that passes, its replay
// and one that fails are counted by status and format and timed; a proxy
// that is pushed listeners and ACKs them is a push, an ACK and a latency;
// one that NACKs clusters a NACK.
func TestMetricsOfAttestationAndXDS(t *testing.T) {
	n, cl, _ := runNode(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(attestDoc)); err != nil {
		t.Fatal(err)
	}
	attestWith := func(dev, firmware string) []byte {
		tpm, err := attest.NewSimTPM(false)
		if err != nil {
			t.Fatal(err)
		}
		pemAK, _ := tpm.AKPublicPEM()
		if _, err := cl.Enroll(ctx, dev, api.EnrollRequest{TPMAK: string(pemAK)}); err != nil {
			t.Fatal(err)
		}
		if err := tpm.MeasureFirmware(firmware); err != nil {
			t.Fatal(err)
		}
		ch, err := cl.Challenge(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		nonce, _ := hex.DecodeString(ch.Nonce)
		ev, err := tpm.Evidence(nonce, []int{16})
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(ev)
		if _, err := cl.Attest(ctx, dev, raw); err != nil {
			t.Fatal(err)
		}
		return raw
	}
	raw := attestWith("slc-1", goodFirmware)
	if _, err := cl.Attest(ctx, "slc-1", raw); err == nil {
		t.Fatal("a replay was accepted")
	}
	attestWith("slc-2", strings.Repeat("2", 64))

	cc, err := grpc.NewClient(n.XDSAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ads, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{resourcev3.ListenerType, resourcev3.ClusterType} {
		if err := ads.Send(&discoverygrpc.DiscoveryRequest{Node: &corev3.Node{Id: "gw-1"}, TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
		r, err := ads.Recv()
		if err != nil {
			t.Fatal(err)
		}
		answer := &discoverygrpc.DiscoveryRequest{TypeUrl: typ, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}
		if typ == resourcev3.ClusterType {
			answer = &discoverygrpc.DiscoveryRequest{TypeUrl: typ, ResponseNonce: r.GetNonce(), ErrorDetail: &rpcstatus.Status{Code: 3, Message: "no"}}
		}
		if err := ads.Send(answer); err != nil {
			t.Fatal(err)
		}
	}

	var text string
	testwait.For(t, 10*time.Second, "the ACK and the NACK counted", func() bool {
		text = scrape(t, n)
		return value(text, `vigil_xds_nacks_total{type="cds"}`) == 1
	})
	for series, want := range map[string]float64{
		`vigil_attestation_results_total{format="tpm2-quote",status="passed"}`: 1,
		`vigil_attestation_results_total{format="tpm2-quote",status="failed"}`: 1,
		`vigil_attestation_results_total{format="eat",status="passed"}`:        0,
		`vigil_attestation_replays_refused_total`:                              1,
		`vigil_attestation_verify_duration_seconds_count{format="tpm2-quote"}`: 3, // the replay was verified too
		`vigil_xds_acks_total{type="lds"}`:                                     1,
		`vigil_xds_acks_total{type="cds"}`:                                     0,
		`vigil_xds_nacks_total{type="lds"}`:                                    0,
		`vigil_xds_push_duration_seconds_count{type="lds"}`:                    1,
		`vigil_xds_push_duration_seconds_count{type="cds"}`:                    0,
		`vigil_xds_resources_nacked`:                                           1,
	} {
		if got := value(text, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// A change committed just before the stream opened may push again.
	for _, typ := range []string{"lds", "cds"} {
		if v := value(text, `vigil_xds_pushes_total{type="`+typ+`"}`); v < 1 {
			t.Errorf("%s pushes: %v", typ, v)
		}
	}
	for _, name := range []string{"slc-1", "slc-2", "gw-1", "telemetry"} {
		if strings.Contains(text, name) {
			t.Errorf("/metrics names %q", name)
		}
	}
	lint(t, text)
}

// TestMetricsOfSPIRE: with the integration on, the leader's reconcile
// passes are counted, nothing lags once the server holds the entries, and
// the SPIRE metrics the alert rules use are served.
func TestMetricsOfSPIRE(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping a test against the real spire-server")
	}
	if _, err := spiretest.Binaries(); err != nil {
		t.Skipf("real SPIRE is not available (scripts/spire-build.sh could not provide it): %v", err)
	}
	srv, err := spiretest.StartServer("", "city.example")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	n, _, _ := runNode(t, func(c *Config) { c.SPIRE.Socket, c.SPIRE.Options = srv.Socket, spire.DefaultOptions() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ix, err := topology.NewIndex(topologytest.Generate(topologytest.Spec{Zones: 1, GatewaysPerZone: 2, Devices: 10, NoAttestation: true}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Store().ReplaceDocument(ctx, ix); err != nil {
		t.Fatal(err)
	}
	var text string
	testwait.For(t, 20*time.Second, "a full pass over 14 entries, and no lag", func() bool {
		text = scrape(t, n)
		return value(text, `vigil_spire_entries_desired`) == 14 && value(text, `vigil_spire_reconcile_lag_seconds`) == 0
	})
	if v := value(text, `vigil_spire_reconcile_passes_total{pass="full",result="ok"}`); v < 1 {
		t.Errorf("full passes: %v", v)
	}
	for _, series := range []string{
		`vigil_spire_reconcile_passes_total{pass="full",result="failed"}`,
		`vigil_spire_reconcile_passes_total{pass="subjects",result="failed"}`,
		`vigil_spire_reconcile_errors_total{op="plan"}`,
		`vigil_spire_reconcile_errors_total{op="create"}`,
	} {
		if v := value(text, series); v != 0 {
			t.Errorf("%s = %v, want 0", series, v)
		}
	}
	for _, name := range ruleMetrics(t) {
		if strings.HasPrefix(name, "vigil_spire_") && !strings.Contains(text, name) {
			t.Errorf("examples/prometheus/vigil-rules.yml uses %s, which /metrics does not serve with SPIRE on", name)
		}
	}
	lint(t, text)
}
