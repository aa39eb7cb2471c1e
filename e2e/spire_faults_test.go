package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/spire/spiretest"
	"github.com/vigil-iot/vigil/topology"
)

// TestSPIREDownLosesNoQuarantine proves that a SPIRE server that is slow
// (stopped with SIGSTOP: it accepts nothing and answers nothing) or down
// (killed, then started again on the same data dir and socket) delays the
// reconciliation of a quarantine but loses none: every member's ext_authz
// denies the device at once, whatever SPIRE does; `vigil spire status` on
// the leader shows the reconciliation lagging while SPIRE is away; and
// once SPIRE is back the device's registration entry is deleted within a
// bounded time and the status clears.
func TestSPIREDownLosesNoQuarantine(t *testing.T) {
	srv := spireServer(t)
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 3,
		Args: []string{"--spire-socket", srv.Socket, "--monitor=false"}})
	data, err := json.Marshal(partitionDoc())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client(0).ApplyTopology(ctxFor(t, 30*time.Second), data); err != nil {
		t.Fatal(err)
	}
	sc, err := spire.Dial(srv.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	entry := func(device string) (bool, error) {
		_, found, err := sc.GetEntry(ctxFor(t, 5*time.Second), "vigil.device."+device)
		return found, err
	}
	testwait.For(t, 30*time.Second, "the entries of slc-1 and slc-2", func() bool {
		f1, err1 := entry("slc-1")
		f2, err2 := entry("slc-2")
		return err1 == nil && err2 == nil && f1 && f2
	})
	leader, err := c.WaitLeader()
	if err != nil {
		t.Fatal(err)
	}
	follower := (leader + 1) % 3
	env := []string{"VIGIL_TOKEN=" + c.Token()}
	authz := authzClients(t, c)
	telemetry := func(device string) *authv3.CheckRequest {
		return lightCheck(device, "telemetry.city.example", "POST", "/api/v1/telemetry")
	}
	allowedOn := func(i int, device string) bool {
		t.Helper()
		resp, err := authz[i].Check(ctxFor(t, 5*time.Second), telemetry(device))
		if err != nil {
			t.Fatalf("Check on %s: %v", c.Member(i).ID, err)
		}
		return codes.Code(resp.GetStatus().GetCode()) == codes.OK
	}
	status := func() spireStatus {
		t.Helper()
		res := mustCLI(t, env, "spire", "status", "-o", "json", "--server", c.Member(leader).APIAddr)
		var out struct {
			Member string      `json:"member"`
			SPIRE  spireStatus `json:"spire"`
		}
		if err := json.Unmarshal([]byte(res.stdout), &out); err != nil || out.Member != c.Member(leader).ID {
			t.Fatalf("vigil spire status -o json: %v\n%s", err, res)
		}
		st := out.SPIRE
		var compact bytes.Buffer
		json.Compact(&compact, []byte(res.stdout))
		st.raw = compact.String()
		return st
	}
	if st := status(); !st.Leader || st.Pending || st.Error != "" {
		t.Fatalf("vigil spire status on the leader before any fault: %s", st.raw)
	}

	// quarantine quarantines device through a follower and checks that
	// every member's ext_authz denies it at once, SPIRE or not.
	quarantine := func(device, why string) topology.Revision {
		t.Helper()
		for i := range c.Size() {
			if !allowedOn(i, device) {
				t.Fatalf("%s denies %s before its quarantine", c.Member(i).ID, device)
			}
		}
		s, err := c.Client(follower).Quarantine(ctxFor(t, 10*time.Second), topology.KindDevice, device, why)
		if err != nil {
			t.Fatalf("quarantine %s with SPIRE %s: %v", device, why, err)
		}
		committed := time.Now()
		for i := range c.Size() {
			testwait.For(t, time.Second, c.Member(i).ID+"'s ext_authz to deny "+device, func() bool { return !allowedOn(i, device) })
		}
		t.Logf("SPIRE %s: %s quarantined at revision %d; every member's ext_authz denies it %v after the commit",
			why, device, s.Revision, time.Since(committed).Round(time.Millisecond))
		return s.Revision
	}
	// lagging checks, 3 s after the quarantine of rev, that the leader's
	// status shows it not reconciled, the lag, and (wantErr) why; and
	// logs what the metric says.
	lagging := func(why string, rev topology.Revision, wantErr bool) {
		t.Helper()
		time.Sleep(3 * time.Second) // SPIRE has been away a while
		st := status()
		t.Logf("SPIRE %s, 3s after the quarantine: vigil spire status: %s; vigil_spire_reconcile_lag_seconds %s",
			why, st.raw, metric(t, c.Member(leader).APIAddr, "vigil_spire_reconcile_lag_seconds"))
		if !st.Leader {
			t.Errorf("SPIRE %s: vigil spire status on the leader says it does not lead: %s", why, st.raw)
		}
		if st.reconciled(rev) {
			t.Errorf("SPIRE %s: vigil spire status says revision %d was reconciled: %s", why, rev, st.raw)
		}
		if lag, err := time.ParseDuration(st.Lag); err != nil || lag < 2*time.Second {
			t.Errorf("SPIRE %s: vigil spire status shows a lag of %q 3s after the quarantine of revision %d: %s", why, st.Lag, rev, st.raw)
		}
		if wantErr && st.Error == "" {
			t.Errorf("SPIRE %s: vigil spire status shows no error: %s", why, st.raw)
		}
	}
	// caughtUp waits for device's entry to go and the status to clear.
	caughtUp := func(why, device string, rev topology.Revision, back time.Time) {
		t.Helper()
		var deleted time.Duration
		testwait.For(t, 60*time.Second, device+"'s entry to be deleted after SPIRE came back", func() bool {
			found, err := entry(device)
			if err == nil && !found {
				deleted = time.Since(back)
				return true
			}
			return false
		})
		var st spireStatus
		testwait.For(t, 10*time.Second, "vigil spire status to clear", func() bool {
			st = status()
			return st.reconciled(rev) && !st.Pending && st.Error == "" && st.Lag == ""
		})
		t.Logf("SPIRE %s: %s's entry deleted %v after SPIRE came back; then vigil spire status: %s", why, device, deleted.Round(time.Millisecond), st.raw)
		// A failed pass is retried with a backoff that doubles up to 5s
		// (spire.maxRetry), plus the pass itself.
		if deleted > 10*time.Second {
			t.Errorf("SPIRE %s: %s's entry was deleted %v after SPIRE came back", why, device, deleted)
		}
		for i := range c.Size() {
			if allowedOn(i, device) {
				t.Errorf("%s allows %s after SPIRE came back", c.Member(i).ID, device)
			}
		}
	}

	// Slow: the server is stopped (SIGSTOP); its socket still accepts
	// connections, nothing answers.
	if err := syscall.Kill(srv.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	t.Cleanup(func() {
		if stopped {
			syscall.Kill(srv.PID(), syscall.SIGCONT)
		}
	})
	rev := quarantine("slc-1", "slow (SIGSTOP)")
	lagging("slow (SIGSTOP)", rev, false) // the call hangs: no error yet
	if err := syscall.Kill(srv.PID(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	caughtUp("slow (SIGSTOP)", "slc-1", rev, time.Now())

	// Down: the server is killed, and started again later on the same
	// data dir and socket.
	if err := syscall.Kill(srv.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("spire-server did not die")
	}
	rev = quarantine("slc-2", "down (killed)")
	lagging("down (killed)", rev, true)
	time.Sleep(*spireDown) // a longer outage: the reconciler's retries back off
	back := restartSPIREServer(t, srv)
	caughtUp("down (killed)", "slc-2", rev, back)
	// The other devices' entries are untouched.
	for _, d := range []string{"slc-3", "slc-4"} {
		if found, err := entry(d); err != nil || !found {
			t.Errorf("%s's entry after SPIRE came back: found %v, %v", d, found, err)
		}
	}
}

var spireDown = flag.Duration("spire-down", 0, "TestSPIREDownLosesNoQuarantine keeps the killed spire-server down this much longer (about 3s plus this) before starting it again")

// spireStatus is `vigil spire status -o json` (spire.Status).
type spireStatus struct {
	Leader  bool          `json:"leader"`
	Pending bool          `json:"pending"`
	Last    *spire.Result `json:"last"`
	Error   string        `json:"error"`
	// Lag is how long the oldest change not yet applied to the server has
	// waited ("3.1s"); empty when none waits.
	Lag string `json:"lag"`
	raw string
}

// reconciled reports whether the last pass applied revision rev or later.
func (s spireStatus) reconciled(rev topology.Revision) bool {
	return s.Last != nil && s.Last.Revision >= rev
}

// metric is the value of an unlabelled metric in the member's /metrics.
func metric(t *testing.T, apiAddr, name string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxFor(t, 5*time.Second), http.MethodGet, "http://"+apiAddr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return v
		}
	}
	return "(absent)"
}

// restartSPIREServer starts spire-server again with srv's configuration
// (its data dir, keys and socket), after it exited, waits until it
// answers, and returns when it did. It is stopped when the test ends,
// before srv's own cleanup removes its directory.
func restartSPIREServer(t *testing.T, srv *spiretest.Server) time.Time {
	t.Helper()
	log, err := os.OpenFile(filepath.Join(srv.Dir, "server.log"), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(srv.Bin, "spire-server")
	cmd := exec.Command(bin, "run", "-config", filepath.Join(srv.Dir, "server.conf"))
	cmd.Stdout, cmd.Stderr = log, log
	p, err := harness.StartProcess(cmd)
	if err != nil {
		log.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		log.Close()
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		out, err := exec.CommandContext(ctx, bin, "bundle", "show", "-socketPath", srv.Socket).Output()
		cancel()
		if err == nil && len(out) > 0 {
			return time.Now()
		}
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("spire-server did not come back (exited %v): %v\n%s", p.Exited(), err, srv.Tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
