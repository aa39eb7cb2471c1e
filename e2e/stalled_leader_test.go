package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/topology"
)

// TestStalledLeader stops the leader of a 3-member cluster with SIGSTOP
// for about 3 s, as a long GC or VM pause would, against the real
// spire-server. The others elect a new leader, through which a street
// light is quarantined (its SPIRE entry deleted); then the old leader is
// resumed (SIGCONT). Right after it resumes it still believes it leads,
// holds the topology as it was before the quarantine, and has a resync of
// the SPIRE server due (--spire-resync 1s): acting on that would create
// the quarantined light's entry again. It must not: it changes SPIRE only
// once a quorum confirms its leadership (raft.Store.VerifiedLeader). The
// test checks from SPIRE's side that the entry never comes back, from the
// old leader's log that it made no change to SPIRE after resuming, that
// the playbook's webhooks heard nothing, and that the quarantine is
// enforced by every member's authorizer. It reports how long writes were
// unavailable.
func TestStalledLeader(t *testing.T) {
	srv := spireServer(t)
	var hooks struct {
		mu  sync.Mutex
		log []string // "at method path user-agent"
	}
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hooks.mu.Lock()
		hooks.log = append(hooks.log, fmt.Sprintf("%s %s %s %s", time.Now().Format(time.RFC3339Nano), r.Method, r.URL.Path, r.UserAgent()))
		hooks.mu.Unlock()
	}))
	t.Cleanup(sink.Close)
	hooksSince := func(from time.Time) []string {
		hooks.mu.Lock()
		defer hooks.mu.Unlock()
		var out []string
		for _, l := range hooks.log {
			if at, err := time.Parse(time.RFC3339Nano, strings.Fields(l)[0]); err == nil && !at.Before(from) {
				out = append(out, l)
			}
		}
		return out
	}
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 3, LogLevel: "info", Args: []string{
		"--spire-socket", srv.Socket, "--spire-resync", "1s",
		"--owner-webhook", sink.URL + "/owner", "--siem-webhook", sink.URL + "/siem"}})
	env := []string{"VIGIL_TOKEN=" + c.Token()}
	path, _ := smartCity(t)
	mustCLI(t, env, "topology", "apply", "-f", path, "--server", c.Member(aFollower(t, c)).APIAddr)
	sc, err := spire.Dial(srv.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	const entries = smartCityDevices + 4 // and the services
	testwait.For(t, 30*time.Second, "an entry for every device and service", func() bool {
		list, err := sc.ListEntries(ctxFor(t, 10*time.Second), "vigil", "")
		return err == nil && len(list) == entries
	})

	old, err := c.Leader()
	if err != nil {
		t.Fatal(err)
	}
	oldID := c.Member(old).ID
	followers, err := c.Followers()
	if err != nil {
		t.Fatal(err)
	}
	monitorBefore := monitorCounts(t, c, old)

	// A writer through a follower, all along: it measures how long writes
	// are unavailable while the leader is stopped.
	w := startRiskWriter(c, followers[0], "slc-n1-001")
	time.Sleep(time.Second)

	const quarantined = "slc-n1-003"
	paused := time.Now()
	if err := c.Pause(old); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Resume(old) }) // a failed test must not leave it stopped
	newLeader := -1
	testwait.For(t, 15*time.Second, "the other members to elect a new leader", func() bool {
		id := raftLeader(t, c, followers)
		if id == "" || id == oldID {
			return false
		}
		newLeader = slices.IndexFunc(followers, func(i int) bool { return c.Member(i).ID == id })
		newLeader = followers[newLeader]
		return true
	})
	elected := time.Since(paused)
	q, err := c.Client(newLeader).Quarantine(ctxFor(t, 10*time.Second), topology.KindDevice, quarantined, "stalled leader e2e")
	if err != nil {
		t.Fatalf("quarantine through the new leader %s: %v", c.Member(newLeader).ID, err)
	}
	waitNoEntry(t, sc, "vigil.device."+quarantined)
	if rest := 3*time.Second - time.Since(paused); rest > 0 {
		time.Sleep(rest)
	}

	logBefore := fileSize(t, c.Member(old).LogPath)
	resumed := time.Now()
	if err := c.Resume(old); err != nil {
		t.Fatal(err)
	}
	stopped := resumed.Sub(paused)

	// From SPIRE's side: the quarantined light's entry never comes back
	// and nothing else changes, through several of the old leader's resync
	// periods.
	deadline := time.Now().Add(5 * time.Second)
	polls := 0
	for time.Now().Before(deadline) {
		list, err := sc.ListEntries(ctxFor(t, 10*time.Second), "vigil", "")
		if err != nil {
			t.Fatal(err)
		}
		polls++
		ids := make([]string, len(list))
		for i, e := range list {
			ids[i] = e.ID
		}
		if slices.Contains(ids, "vigil.device."+quarantined) {
			t.Fatalf("%v after the old leader %s resumed, the quarantined %s has a SPIRE entry again", time.Since(resumed), oldID, quarantined)
		}
		if len(list) != entries-1 {
			t.Fatalf("%v after the old leader resumed, SPIRE holds %d of Vigil's entries; want %d", time.Since(resumed), len(list), entries-1)
		}
		time.Sleep(25 * time.Millisecond)
	}

	// The old leader has stepped down and follows the new one.
	if id := raftLeader(t, c, []int{0, 1, 2}); id != c.Member(newLeader).ID {
		t.Errorf("after the old leader resumed the members agree on leader %q; want %s", id, c.Member(newLeader).ID)
	}

	// From the old leader's side: after resuming it changed nothing on
	// SPIRE (a pass that changes something logs "spire: reconciled"; a
	// ban, an eviction, a join token log their own lines), and its monitor
	// opened no incident and quarantined nothing.
	after := readFrom(t, c.Member(old).LogPath, logBefore)
	for _, line := range strings.Split(after, "\n") {
		for _, act := range []string{"spire: reconciled", "spire: agent banned", "spire: agent evicted", "spire: join token issued"} {
			if strings.Contains(line, act) {
				t.Errorf("the old leader %s changed SPIRE after resuming: %s", oldID, line)
			}
		}
	}
	unconfirmed := strings.Count(after, "a quorum did not confirm it")
	if got := monitorCounts(t, c, old); got != monitorBefore {
		t.Errorf("the old leader's monitor acted after resuming: quarantines and incidents %v, before the stop %v", got, monitorBefore)
	}
	if h := hooksSince(resumed); len(h) > 0 {
		t.Errorf("playbook webhooks called after the old leader resumed:\n%s", strings.Join(h, "\n"))
	}
	pm := scrape(t, c.Member(old).APIAddr)

	// The quarantine holds on every member, the resumed one included.
	authz := authzClients(t, c)
	for i := range c.Size() {
		cl := c.Client(i)
		cl.MinRevision = q.Revision
		if s, err := cl.Subject(ctxFor(t, 15*time.Second), topology.KindDevice, quarantined); err != nil || !s.Quarantined {
			t.Errorf("%s: %s quarantined %v (%v)", c.Member(i).ID, quarantined, s != nil && s.Quarantined, err)
		}
		for dev, want := range map[string]bool{quarantined: true, "slc-n1-002": false} {
			ok, reason := checkDevice(t, authz[i], dev)
			if ok || strings.Contains(reason, "is quarantined") != want {
				t.Errorf("%s: %s: allowed %v, %q; want denied, as quarantined: %v", c.Member(i).ID, dev, ok, reason, want)
			}
		}
	}

	res := w.stop(paused, resumed)
	t.Logf("leader %s stopped (SIGSTOP) for %v; a new leader (%s) agreed on by the others after %v",
		oldID, stopped.Round(time.Millisecond), c.Member(newLeader).ID, elected.Round(time.Millisecond))
	t.Logf("writes through %s, one every 100 ms: %d ok, %d failed %v; the first write started after the stop succeeded %v after it; the slowest write took %v",
		c.Member(followers[0]).ID, res.ok, res.failed, res.failures, res.unavailable.Round(time.Millisecond), res.slowest.Round(time.Millisecond))
	if res.unavailable == 0 || res.unavailable > stopped {
		t.Errorf("no write succeeded while the old leader was stopped (%v)", stopped)
	}
	t.Logf("old leader after resuming: %d SPIRE passes stopped for want of a confirmed leadership (log), passes %v; SPIRE polled %d times over 5 s",
		unconfirmed, pm.matching("vigil_spire_reconcile_passes_total"), polls)
}

// riskWriter writes a device's risk (1 or 2, harmless) through one member,
// a write every 100 ms whether or not the earlier ones have returned, and
// keeps when each started and ended.
type riskWriter struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	log   []writeAttempt
}

type writeAttempt struct {
	start, end time.Time
	err        error
}

func startRiskWriter(c *harness.Cluster, i int, device string) *riskWriter {
	w := &riskWriter{stopc: make(chan struct{})}
	cl := c.Client(i)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-w.stopc:
				return
			case <-tick.C:
			}
			w.wg.Add(1)
			go func() {
				defer w.wg.Done()
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				_, err := cl.UpdateState(ctx, []raft.StateOp{{Subject: topology.DeviceSubject(device), Op: raft.OpSetRisk,
					Risk: &topology.Risk{Score: n%2 + 1, UpdatedAt: start.UTC()}}})
				w.mu.Lock()
				w.log = append(w.log, writeAttempt{start, time.Now(), err})
				w.mu.Unlock()
			}()
		}
	}()
	return w
}

type writeStats struct {
	ok, failed int
	// unavailable is how long after the stop the first write started
	// after it succeeded; slowest the longest write that started before
	// the resume.
	unavailable, slowest time.Duration
	failures             []string
}

func (w *riskWriter) stop(paused, resumed time.Time) writeStats {
	close(w.stopc)
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	var st writeStats
	first := time.Time{}
	for _, a := range w.log {
		if a.err != nil {
			st.failed++
			msg := a.err.Error()
			if i := strings.IndexAny(msg, ":;"); i > 0 {
				msg = msg[:i]
			}
			if msg = fmt.Sprintf("%q (started +%v)", msg, a.start.Sub(paused).Round(100*time.Millisecond)); len(st.failures) < 3 {
				st.failures = append(st.failures, msg)
			}
			continue
		}
		st.ok++
		if !a.start.Before(paused) && (first.IsZero() || a.end.Before(first)) {
			first = a.end
		}
		if a.start.Before(resumed) {
			st.slowest = max(st.slowest, a.end.Sub(a.start))
		}
	}
	if !first.IsZero() {
		st.unavailable = first.Sub(paused)
	}
	return st
}

// raftLeader is the leader that members' own raft reports (GET
// /v1/cluster/self, which asks no other member), once every member in
// among agrees; "" when they do not.
func raftLeader(t *testing.T, c *harness.Cluster, among []int) string {
	t.Helper()
	id := ""
	for _, i := range among {
		st, err := c.Client(i).Self(ctxFor(t, time.Second))
		if err != nil || st.LeaderID == "" || id != "" && st.LeaderID != id {
			return ""
		}
		id = st.LeaderID
	}
	return id
}

// monitorCounts is member i's monitor's quarantines and incidents opened.
func monitorCounts(t *testing.T, c *harness.Cluster, i int) [2]float64 {
	t.Helper()
	n, err := c.Client(i).Node(ctxFor(t, 10*time.Second))
	if err != nil {
		t.Fatalf("%s: GET /v1/node: %v", c.Member(i).ID, err)
	}
	parts, _ := n["parts"].(map[string]any)
	m, _ := parts["monitor"].(map[string]any)
	q, _ := m["quarantines"].(float64)
	inc, _ := m["incidentsOpened"].(float64)
	return [2]float64{q, inc}
}

// checkDevice asks as gw-north-1's Envoy for a device of the smart city
// posting telemetry.
func checkDevice(t *testing.T, cl authv3.AuthorizationClient, dev string) (bool, string) {
	t.Helper()
	d := checkAsIn(t, cl, "north", "gw-north-1", dev, "telemetry.city.example", "/api/v1/telemetry")
	return d.allowed, d.reason
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func readFrom(t *testing.T, path string, off int64) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data[min(off, int64(len(data))):])
}

// metricsText is a member's /metrics.
type metricsText []string

func scrape(t *testing.T, addr string) metricsText {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxFor(t, 5*time.Second), http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out metricsText
	s := bufio.NewScanner(resp.Body)
	for s.Scan() {
		if l := s.Text(); !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// matching are the samples of a metric, as "labels=value".
func (m metricsText) matching(name string) []string {
	var out []string
	for _, l := range m {
		if strings.HasPrefix(l, name+"{") || strings.HasPrefix(l, name+" ") {
			f := strings.Fields(l)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil && v != 0 {
				out = append(out, strings.TrimPrefix(l, name))
			}
		}
	}
	return out
}
