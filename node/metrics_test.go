package node

import (
	"context"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

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
	resp, err := http.Get("http://" + n.APIAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	text := string(body)
	for _, want := range []string{
		`vigil_member_ready 1`,
		`vigil_raft_state{state="leader"} 1`,
		`vigil_authz_decisions_total{cause="none",result="allow"} 1`,
		`vigil_authz_decisions_total{cause="no-flow",result="deny"} 1`,
		`vigil_authz_decision_duration_seconds_count 2`,
		`vigil_decision_log_dropped_total 0`,
		`vigil_xds_proxies_connected 0`,
		`vigil_monitor_events_judged_total`,
		`vigil_incidents{status="open"} 0`,
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
	// Every metric the shipped alert rules use is one the member serves.
	rules, err := os.ReadFile("../examples/prometheus/vigil-rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range regexp.MustCompile(`vigil_[a-z_]+`).FindAllString(string(rules), -1) {
		if !strings.Contains(text, name) {
			t.Errorf("examples/prometheus/vigil-rules.yml uses %s, which /metrics does not serve", name)
		}
	}
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
