package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/e2e/harness"
)

// TestPrometheusScrapesAMember runs Debian's Prometheus against a member:
// it scrapes GET /metrics (no token), the member's figures can be queried,
// and the alert rules shipped in examples/prometheus load and evaluate
// (promtool checks them first). Without prometheus the test skips, unless
// VIGIL_REQUIRE_PROMETHEUS is set (as .ci/run sets it).
func TestPrometheusScrapesAMember(t *testing.T) {
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("VIGIL_REQUIRE_PROMETHEUS") != "" {
			t.Fatal("prometheus is not installed (apt-get install prometheus), and VIGIL_REQUIRE_PROMETHEUS is set")
		}
		t.Skip("prometheus is not installed (apt-get install prometheus)")
	}
	rules, err := harness.ExamplePath("prometheus/vigil-rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		if out, err := exec.Command(promtool, "check", "rules", rules).CombinedOutput(); err != nil {
			t.Fatalf("promtool check rules: %v\n%s", err, out)
		}
	}
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 1})
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: vigil
    static_configs: [{targets: [%q]}]
`, rules, c.Member(0).APIAddr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, prom, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	logf, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel() // stops the prometheus this test started, by its PID
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Logf("prometheus log:\n%s", b)
		}
	})
	query := func(q string) (string, error) {
		resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Value []any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || len(r.Data.Result) == 0 || len(r.Data.Result[0].Value) < 2 {
			return "", fmt.Errorf("no result for %s (%v)", q, err)
		}
		return fmt.Sprint(r.Data.Result[0].Value[1]), nil
	}
	for _, q := range []string{`up{job="vigil"}`, `vigil_member_ready`, `vigil_raft_state{state="leader"}`} {
		waitUntil(t, 60*time.Second, "prometheus has "+q+" = 1", func() bool {
			v, err := query(q)
			return err == nil && v == "1"
		})
	}
	// The shipped rules are loaded and evaluate without errors.
	waitUntil(t, 30*time.Second, "the vigil rules evaluated", func() bool {
		resp, err := http.Get("http://" + addr + "/api/v1/rules")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Groups []struct {
					Name  string `json:"name"`
					Rules []struct {
						Name   string `json:"name"`
						Health string `json:"health"`
					} `json:"rules"`
				} `json:"groups"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || len(r.Data.Groups) != 1 || r.Data.Groups[0].Name != "vigil" {
			return false
		}
		for _, rule := range r.Data.Groups[0].Rules {
			if rule.Health != "ok" {
				if rule.Health == "err" {
					t.Fatalf("rule %s does not evaluate", rule.Name)
				}
				return false
			}
		}
		return len(r.Data.Groups[0].Rules) > 5
	})
	if v, err := query(`ALERTS{alertname="VigilNoLeader"}`); err == nil {
		t.Fatalf("VigilNoLeader fires on a healthy member: %s", v)
	}
}
