package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// TestDiskFull: a member whose disk is full stops accepting writes, keeps
// answering ext_authz from memory, says why, and recovers by itself when
// space returns, with its log intact.
//
// Each member's data dir is a tmpfs of its own (so the test needs root,
// and is skipped without it); one member's is filled with a file until
// the file system answers ENOSPC, and freed by removing the file. While it
// is full, writes go on through the two healthy members; the full member
// answers Checks from its replica (a device quarantined before stays
// denied), says "disk full" in GET /v1/node, and refuses what it would
// have to write itself (as leader: writes, which it hands to another
// member; a snapshot). Once space returns it catches up with the leader
// without a restart, its decision log verifies with `vigil audit verify`
// (the lines it could not write are a gap entry that counts them), and it
// restarts from its raft.db.
//
// follower: the full member follows. leader: the full member leads; the
// test measures how long writes through the healthy members waited.
func TestDiskFull(t *testing.T) {
	t.Run("follower", func(t *testing.T) { diskFull(t, false) })
	t.Run("leader", func(t *testing.T) { diskFull(t, true) })
}

const (
	diskFullDevices = 1200
	// diskFullTmpfs is each member's data dir: room enough that a healthy
	// member is not low on space (under 64 MiB free).
	diskFullTmpfs = "96m"
)

func diskFull(t *testing.T, fillLeader bool) {
	dir := t.TempDir()
	for i := 1; i <= 3; i++ {
		mountTmpfs(t, filepath.Join(dir, fmt.Sprintf("n%d", i)), diskFullTmpfs)
	}
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 3, Dir: dir})
	doc := topologytest.Generate(topologytest.Spec{Zones: 2, GatewaysPerZone: 2, Devices: diskFullDevices, NoAttestation: true})
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client(0).ApplyTopology(ctxFor(t, time.Minute), data); err != nil {
		t.Fatal(err)
	}
	ix, err := topology.NewIndex(doc)
	if err != nil {
		t.Fatal(err)
	}
	spiffeID := func(n int) string {
		id, _ := ix.SPIFFEID(topology.DeviceSubject(topologytest.DeviceName(n)))
		return id
	}
	// Street lights (i % 3 == 0), which flow sensor-telemetry allows; the
	// writer quarantines devices from 100 on.
	const before, during = 0, 3
	allowed := func(k int) int { return 6 + 3*(k%30) } // a fresh device per Check: no rate limit
	if _, err := c.Client(1).Quarantine(ctxFor(t, 15*time.Second), topology.KindDevice, topologytest.DeviceName(before), "e2e: before the disk filled"); err != nil {
		t.Fatal(err)
	}
	clients := make([]authv3.AuthorizationClient, c.Size())
	for i := range clients {
		clients[i], _ = authzClient(t, c, i)
		diskWaitCheck(t, c, clients[i], i, spiffeID(before), codes.PermissionDenied, "is quarantined", 10*time.Second)
	}

	leader, err := c.Leader()
	if err != nil {
		t.Fatal(err)
	}
	m := aFollower(t, c)
	if fillLeader {
		m = leader
	}
	mem := c.Member(m)
	pid := c.PID(m)
	healthy := slices.DeleteFunc([]int{0, 1, 2}, func(i int) bool { return i == m })
	diskWaitCheck(t, c, clients[m], m, spiffeID(allowed(0)), codes.OK, "", 5*time.Second)

	w := startDiskWriter(c, healthy)
	time.Sleep(500 * time.Millisecond) // writes flow before the disk fills
	filler := fillDisk(t, mem.DataDir)
	filled := time.Now()
	t.Logf("filled %s's data dir %s (%s leads)", mem.ID, mem.DataDir, c.Member(leader).ID)

	// A write at the full member: a leader refuses it, naming its disk; a
	// follower forwards it to the leader.
	start := time.Now()
	_, err = c.Client(m).Quarantine(ctxFor(t, 15*time.Second), topology.KindDevice, topologytest.DeviceName(90), "e2e: at the full member")
	t.Logf("a write at %s (full) answered after %v: %v", mem.ID, time.Since(start).Round(time.Millisecond), err)
	if err != nil {
		if e := asAPIError(t, err); e.Code != api.CodeDiskFull || !strings.Contains(e.Message, mem.DataDir) || !strings.Contains(e.Message, "full") {
			t.Errorf("a write at %s with a full disk: want success (forwarded) or %s naming its data dir, got %s %d: %v",
				mem.ID, api.CodeDiskFull, e.Code, e.Status, err)
		}
	}

	// It says why.
	var disk map[string]any
	diskWait(t, 5*time.Second, mem.ID+" to report its disk full in GET /v1/node", func() error {
		disk = diskNodePart(t, c, m, "disk")
		if disk["full"] != true {
			return fmt.Errorf("disk part %v", disk)
		}
		return nil
	})
	t.Logf("%s GET /v1/node disk: %v", mem.ID, disk)
	if free, ok := disk["freeBytes"].(float64); disk["path"] != mem.DataDir || disk["reason"] == nil || !ok || free >= 16<<20 {
		t.Errorf("%s's disk part does not say why: %v", mem.ID, disk)
	}
	if !diskLogHas(mem.LogPath, "data dir is full", mem.DataDir) {
		t.Errorf("%s's log does not say that its data dir %s is full", mem.ID, mem.DataDir)
	}
	if metrics := diskMetrics(t, mem.APIAddr); !strings.Contains(metrics, "\nvigil_data_dir_full 1\n") {
		t.Errorf("%s's /metrics does not say its data dir is full:\n%s", mem.ID, metrics)
	}

	// The others take writes; a full leader has handed over.
	if fillLeader {
		diskWait(t, 10*time.Second, "another member to lead", func() error {
			l, err := c.Leader()
			if err != nil {
				return err
			}
			if l == m {
				return fmt.Errorf("%s still leads", mem.ID)
			}
			leader = l
			return nil
		})
		t.Logf("%s leads %v after the disk filled", c.Member(leader).ID, time.Since(filled).Round(time.Millisecond))
	}
	diskWait(t, 15*time.Second, "writes through the healthy members after the disk filled", func() error {
		if n := w.ackedAfter(filled); n < 5 {
			return fmt.Errorf("%d acknowledged", n)
		}
		return nil
	})
	if _, err := c.Client(healthy[0]).Quarantine(ctxFor(t, 15*time.Second), topology.KindDevice, topologytest.DeviceName(during), "e2e: while the disk was full"); err != nil {
		t.Fatalf("quarantine through %s while %s's disk is full: %v", c.Member(healthy[0]).ID, mem.ID, err)
	}
	for _, i := range healthy {
		diskWaitCheck(t, c, clients[i], i, spiffeID(during), codes.PermissionDenied, "is quarantined", 5*time.Second)
	}

	// The full member answers from its replica and never lets the device
	// quarantined before through.
	for k := range 20 {
		if code, body := diskCheck(t, clients[m], spiffeID(before)); code != codes.PermissionDenied || !strings.Contains(body, "is quarantined") {
			t.Fatalf("%s (full) answered %v %s for %s, quarantined before the disk filled", mem.ID, code, body, topologytest.DeviceName(before))
		}
		if code, body := diskCheck(t, clients[m], spiffeID(allowed(k+1))); code != codes.OK {
			t.Fatalf("%s (full) answered %v %s for a device a flow allows", mem.ID, code, body)
		}
		time.Sleep(25 * time.Millisecond)
	}
	code, body := diskCheck(t, clients[m], spiffeID(during))
	t.Logf("%s (full) answers %v %s for %s, quarantined while its disk was full", mem.ID, code, body, topologytest.DeviceName(during))
	diskWait(t, 5*time.Second, mem.ID+"'s decision log to degrade", func() error {
		diskCheck(t, clients[m], spiffeID(before))
		if dl := diskNodeDecisionLog(t, c, m); dl["degraded"] != true {
			return fmt.Errorf("decision log %v", dl)
		}
		return nil
	})
	// A snapshot needs the disk: refused, and the member goes on.
	_, err = c.Client(m).Snapshot(ctxFor(t, 10*time.Second))
	if e := (*api.Error)(nil); !errors.As(err, &e) || e.Code != api.CodeDiskFull {
		t.Errorf("a snapshot at %s with a full disk: want %s, got %v", mem.ID, api.CodeDiskFull, err)
	}
	if got := c.PID(m); got != pid {
		t.Fatalf("%s is not the process it was before its disk filled (pid %d, now %d)", mem.ID, pid, got)
	}
	t.Logf("%s was full for %v", mem.ID, time.Since(filled).Round(time.Millisecond))

	// Space returns: it catches up by itself.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	st, err := c.Status(leader)
	if err != nil {
		t.Fatal(err)
	}
	target := st.Revision
	// The leader sends the entries the member could not append again,
	// with a back-off that grows with each refusal up to about 10 s
	// (hashicorp/raft's), which bounds how long catching up can take.
	diskWait(t, 15*time.Second, fmt.Sprintf("%s to catch up with revision %d", mem.ID, target), func() error {
		st, err := c.Status(m)
		if err != nil {
			return err
		}
		if st.Revision < target {
			return fmt.Errorf("at revision %d", st.Revision)
		}
		return nil
	})
	t.Logf("%s caught up with revision %d %v after space returned", mem.ID, target, time.Since(freed).Round(time.Millisecond))
	diskWaitCheck(t, c, clients[m], m, spiffeID(during), codes.PermissionDenied, "is quarantined", 5*time.Second)
	var dl map[string]any
	diskWait(t, 5*time.Second, mem.ID+" to report space again and its decision log healed", func() error {
		diskCheck(t, clients[m], spiffeID(allowed(1)))
		disk, dl = diskNodePart(t, c, m, "disk"), diskNodeDecisionLog(t, c, m)
		if disk["full"] != false || dl["degraded"] != false {
			return fmt.Errorf("disk %v; decision log %v", disk, dl)
		}
		return nil
	})
	if _, err := c.Client(m).Quarantine(ctxFor(t, 15*time.Second), topology.KindDevice, topologytest.DeviceName(91), "e2e: after space returned"); err != nil {
		t.Errorf("a write at %s after space returned: %v", mem.ID, err)
	}
	res := w.stop(t)
	if len(res.errs) > 0 {
		t.Errorf("%d writes through the healthy members failed while %s's disk was full: %v", len(res.errs), mem.ID, res.errs)
	}
	gap, longest := res.unavailable(filled)
	t.Logf("writes through the healthy members: %d acknowledged; after the disk filled the longest wait between two acknowledgements was %v, the slowest write %v",
		len(res.acks), gap.Round(time.Millisecond), longest.Round(time.Millisecond))
	if gap > 5*time.Second {
		t.Errorf("writes through the healthy members stalled %v after %s's disk filled", gap, mem.ID)
	}
	if got := c.PID(m); got != pid {
		t.Fatalf("%s restarted (pid %d, now %d)", mem.ID, pid, got)
	}

	// Its decision log verifies, and its gap entries count every decision
	// it dropped; its raft.db opens again.
	dropped := dl["dropped"].(float64)
	if err := c.Stop(m); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(mem.DataDir, "decisions.log")
	out := mustCLI(t, []string{"VIGIL_TOKEN_FILE=" + c.TokenFile()}, "audit", "verify", logPath, "--server", c.Member(healthy[0]).APIAddr)
	if !strings.Contains(out.stdout, "chain intact") {
		t.Errorf("audit verify of %s's decision log said %s", mem.ID, out)
	}
	inGaps := diskGapDrops(t, logPath)
	t.Logf("%s dropped %v decisions while full; its gap entries count %d; vigil audit verify: %s", mem.ID, dropped, inGaps, strings.TrimSpace(out.stdout))
	if dropped == 0 || float64(inGaps) != dropped {
		t.Errorf("%s dropped %v decisions; its gap entries count %d", mem.ID, dropped, inGaps)
	}
	if err := c.Restart(m); err != nil {
		t.Fatal(err)
	}
	diskWaitCheck(t, c, clients[m], m, spiffeID(during), codes.PermissionDenied, "is quarantined", 15*time.Second)
	diskWaitCheck(t, c, clients[m], m, spiffeID(before), codes.PermissionDenied, "is quarantined", time.Second)
}

// diskCheck sends one telemetry Check.
func diskCheck(t *testing.T, cl authv3.AuthorizationClient, spiffeID string) (codes.Code, string) {
	t.Helper()
	resp, err := cl.Check(ctxFor(t, 2*time.Second), telemetryCheck(spiffeID))
	if err != nil {
		t.Fatalf("Check for %s: %v", spiffeID, err)
	}
	return codes.Code(resp.GetStatus().GetCode()), resp.GetDeniedResponse().GetBody()
}

// diskWaitCheck waits until member i answers want (and a body with reason).
func diskWaitCheck(t *testing.T, c *harness.Cluster, cl authv3.AuthorizationClient, i int, spiffeID string, want codes.Code, reason string, d time.Duration) {
	t.Helper()
	diskWait(t, d, fmt.Sprintf("%s to answer %v for %s", c.Member(i).ID, want, spiffeID), func() error {
		if code, body := diskCheck(t, cl, spiffeID); code != want || !strings.Contains(body, reason) {
			return fmt.Errorf("answered %v %s", code, body)
		}
		return nil
	})
}

// diskWait polls f until it returns nil, failing the test after d.
func diskWait(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s: %v", d, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// diskNodePart is parts[name] of member i's GET /v1/node.
func diskNodePart(t *testing.T, c *harness.Cluster, i int, name string) map[string]any {
	t.Helper()
	info, err := c.Client(i).Node(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatalf("%s: GET /v1/node: %v", c.Member(i).ID, err)
	}
	parts, _ := info["parts"].(map[string]any)
	part, _ := parts[name].(map[string]any)
	return part
}

func diskNodeDecisionLog(t *testing.T, c *harness.Cluster, i int) map[string]any {
	t.Helper()
	dl, _ := diskNodePart(t, c, i, "authz")["decisionLog"].(map[string]any)
	return dl
}

// diskMetrics is a member's GET /metrics.
func diskMetrics(t *testing.T, apiAddr string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxFor(t, 5*time.Second), http.MethodGet, "http://"+apiAddr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// diskLogHas reports whether a line of the file holds every one of words.
func diskLogHas(path string, words ...string) bool {
	data, _ := os.ReadFile(path)
	for line := range bytes.Lines(data) {
		if !slices.ContainsFunc(words, func(w string) bool { return !bytes.Contains(line, []byte(w)) }) {
			return true
		}
	}
	return false
}

// diskGapDrops sums the decisions a decision log's gap entries say were dropped.
func diskGapDrops(t *testing.T, path string) uint64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for line := range bytes.Lines(data) {
		var gap struct {
			Gap     string `json:"gap"`
			Dropped uint64 `json:"dropped"`
		}
		if json.Unmarshal(line, &gap) == nil && gap.Gap != "" {
			n += gap.Dropped
		}
	}
	return n
}

// diskWriter quarantines devices from 100 on, one after another, through
// the given members in turn.
type diskWriter struct {
	c    *harness.Cluster
	via  []int
	quit chan struct{}
	done chan struct{}
	mu   sync.Mutex
	res  diskWrites
}

type diskWrites struct {
	acks []diskAck
	errs []string
}

type diskAck struct{ sent, acked time.Time }

func startDiskWriter(c *harness.Cluster, via []int) *diskWriter {
	w := &diskWriter{c: c, via: via, quit: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *diskWriter) run() {
	defer close(w.done)
	for seq := 0; 100+seq < diskFullDevices; seq++ {
		select {
		case <-w.quit:
			return
		case <-time.After(20 * time.Millisecond):
		}
		i := w.via[seq%len(w.via)]
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		sent := time.Now()
		_, err := w.c.Client(i).Quarantine(ctx, topology.KindDevice, topologytest.DeviceName(100+seq), "e2e: writer")
		cancel()
		w.mu.Lock()
		if err != nil {
			w.res.errs = append(w.res.errs, fmt.Sprintf("via %s after %v: %v", w.c.Member(i).ID, time.Since(sent).Round(time.Millisecond), err))
		} else {
			w.res.acks = append(w.res.acks, diskAck{sent: sent, acked: time.Now()})
		}
		w.mu.Unlock()
	}
}

func (w *diskWriter) ackedAfter(t time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, a := range w.res.acks {
		if a.sent.After(t) {
			n++
		}
	}
	return n
}

func (w *diskWriter) stop(t *testing.T) diskWrites {
	t.Helper()
	close(w.quit)
	select {
	case <-w.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the writer did not stop within 20s (each write is bounded at 15s)")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.res
}

// unavailable is, from since on, the longest time between two
// acknowledgements (the first counted from since) and the slowest write.
func (r diskWrites) unavailable(since time.Time) (gap, slowest time.Duration) {
	last := since
	for _, a := range r.acks { // in the order sent, one at a time
		if a.acked.Before(since) {
			continue
		}
		gap = max(gap, a.acked.Sub(last))
		slowest = max(slowest, a.acked.Sub(a.sent))
		last = a.acked
	}
	return gap, slowest
}

// mountTmpfs mounts a tmpfs of size on dir (created) for the rest of the
// test, or skips the test where that cannot be done.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skipf("a full disk is simulated with a size-limited tmpfs, which needs Linux (this is %s)", runtime.GOOS)
	}
	skip := t.Skipf
	if os.Getenv("VIGIL_REQUIRE_TMPFS") != "" {
		skip = t.Fatalf // CI runs as root: not running this would hide a failure
	}
	if os.Geteuid() != 0 {
		skip("a full disk is simulated by mounting a size-limited tmpfs, which needs root")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput()
	if err != nil {
		skip("a full disk is simulated by mounting a size-limited tmpfs, which is not permitted here: mount -t tmpfs on %s: %v: %s",
			dir, err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		// The members are killed by then: cleanups run last first.
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			if out2, err2 := exec.Command("umount", "-l", dir).CombinedOutput(); err2 != nil {
				t.Errorf("umount %s: %v: %s; umount -l: %v: %s", dir, err, out, err2, out2)
			}
		}
	})
}

// fillDisk writes a file in dir until its file system has no space left,
// and returns its path: removing it returns the space.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "e2e-disk-filler")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, chunk := range []int{1 << 20, 4 << 10, 1} {
		buf := make([]byte, chunk)
		for {
			if _, err := f.Write(buf); err != nil {
				if errors.Is(err, syscall.ENOSPC) {
					break
				}
				t.Fatalf("fill %s: %v", dir, err)
			}
		}
	}
	return path
}
