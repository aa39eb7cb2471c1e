package authz

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	"github.com/vigil-iot/vigil/topology"
)

// Tests for what an attacker who can send Check requests could do to a
// member: its memory, its disk, its audit trail and its rate limits.

func hardeningServer(t testing.TB, log Recorder, requireCaller bool) *Server {
	t.Helper()
	snap, engine := hardeningState(t)
	return NewServer(Config{Node: "n1", Snapshot: func() *topology.Snapshot { return snap }, Engine: engine,
		Log: log, Now: func() time.Time { return testNow }, RequireCaller: requireCaller, Logger: quiet()})
}

// hardeningState is the test topology with aq-n1 attested, and an engine
// with the default policy.
func hardeningState(t testing.TB) (*topology.Snapshot, *Engine) {
	ix := testIndex(t)
	st := applyState(t, ix, topology.NewState(), caseState{Attested: map[string]struct {
		Age      string `yaml:"age"`
		Firmware string `yaml:"firmware"`
	}{"aq-n1": {Age: "1h", Firmware: "1.8.3"}}})
	engine, err := NewEngine(context.Background(), quiet())
	if err != nil {
		t.Fatal(err)
	}
	return topology.NewSnapshot(42, 1, ix, st), engine
}

func checkRequest(principal, xfcc, service, host, method, path string) *authv3.CheckRequest {
	c := &checkCase{}
	c.Request.Principal, c.Request.XFCC, c.Request.Service = principal, xfcc, service
	c.Request.Host, c.Request.Method, c.Request.Path = host, method, path
	return c.request()
}

// TestOneCheckCannotBreakTheAuditTrail is finding 1: a path of megabytes of
// control bytes (each JSON-escaped to 6 bytes) made one line longer than
// the verifier reads, and verification stopped there for good. Now every
// recorded field is bounded, so every line verifies, with or without proxy
// TLS, and whether or not the caller may ask.
func TestOneCheckCannotBreakTheAuditTrail(t *testing.T) {
	huge := "/" + strings.Repeat("\x01", 3<<20)
	for _, tc := range []struct {
		name          string
		requireCaller bool
		caller        string
	}{
		{"without proxy TLS", false, ""},
		{"a device SVID as the caller", true, "spiffe://city.example/zone/north/device/aq-n1"},
		{"a gateway as the caller", true, "spiffe://city.example/zone/north/gateway/gw-north"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "decisions.log")
			l, stop := startDecisionLog(t, DecisionLogConfig{Path: path, Logger: discardLogger()})
			s := hardeningServer(t, l, tc.requireCaller)
			ctx := callerContext(t, tc.caller)
			dev := "spiffe://city.example/zone/north/device/aq-n1"
			for _, req := range []*authv3.CheckRequest{
				checkRequest(dev, "", "", "telemetry.city.example", "POST", huge),
				checkRequest(dev+strings.Repeat("\x02", 1<<20), "", "", "telemetry.city.example", "POST", "/api/v1/telemetry"),
				checkRequest(dev, "", strings.Repeat("\x03", 1<<20), "telemetry.city.example", "POST", "/api/v1/telemetry"),
				checkRequest(dev, "", "", "telemetry.city.example"+strings.Repeat("\x04", 1<<20), "POST", "/x"),
				checkRequest(dev, "", "", "telemetry.city.example", strings.Repeat("\x05", 1<<20), "/x"),
				checkRequest(dev, "URI="+strings.Repeat("\x06", 1<<20), "", "telemetry.city.example", "POST", "/x"),
			} {
				resp, _ := s.Check(ctx, req)
				if resp.GetStatus().GetCode() == int32(codes.OK) {
					t.Fatal("an oversized request was allowed")
				}
			}
			// A normal request after them must still be verifiable.
			s.Check(callerContext(t, tc.caller), checkRequest(dev, "", "", "telemetry.city.example", "POST", "/api/v1/telemetry"))
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
				if len(line) > MaxLogLine {
					t.Errorf("line %d is %d bytes; the writer's bound is %d", i+1, len(line), MaxLogLine)
				}
			}
			rep := verifyLogFile(t, path)
			if rep.Entries != 7 || len(rep.Unchecked) != 0 {
				t.Fatalf("report = %+v, want 7 entries all checked", rep)
			}
			if tc.caller != "spiffe://city.example/zone/north/device/aq-n1" && !strings.Contains(string(data), "[cut: ") {
				t.Error("no field carries the cut marker with its length")
			}
		})
	}
}

// TestOversizedPathsAreRefusedBeforeTheyAreKept: a path over MaxPathBytes is
// malformed; it never reaches the policy or the decision cache.
func TestOversizedPathsAreRefusedBeforeTheyAreKept(t *testing.T) {
	log := &memLog{}
	s := hardeningServer(t, log, false)
	long := "/api/v1/telemetry/" + strings.Repeat("a", MaxPathBytes)
	resp, _ := s.Check(context.Background(), checkRequest("spiffe://city.example/zone/north/device/aq-n1", "", "", "telemetry.city.example", "POST", long))
	if resp.GetStatus().GetCode() == int32(codes.OK) || !strings.Contains(log.last().Reason, "at most 8192 are accepted") {
		t.Fatalf("reason %q, want the path refused for its length", log.last().Reason)
	}
	if n := s.cache.len(); n != 0 {
		t.Fatalf("the cache holds %d entries after a refused request", n)
	}
}

// TestTheDecisionCacheIsBoundedInBytes is part of finding 2: the cache was
// bounded in entries, and each entry kept a whole path.
func TestTheDecisionCacheIsBoundedInBytes(t *testing.T) {
	c := newDecisionCache()
	ix := testIndex(t)
	for i := range 20000 {
		k := cacheKey{index: ix, principal: fmt.Sprint("p", i), path: "/" + strings.Repeat("a", MaxPathBytes-16) + fmt.Sprint(i)}
		c.get(k)
		c.put(k, Result{Allowed: true, Reason: "x"})
	}
	total := 0
	for i := range c.shards {
		if b := c.shards[i].bytes; b > maxCachedBytesPerShard {
			t.Errorf("shard %d holds %d bytes, over %d", i, b, maxCachedBytesPerShard)
		}
		total += c.shards[i].bytes
	}
	if total == 0 {
		t.Fatal("nothing was cached")
	}
}

// TestEdgeChecksDoNotSpendDeviceBuckets is finding 3: an edge's Check for a
// device's request (the device in XFCC) spent the device's buckets, so any
// edge could starve devices in every zone, and a request checked at both
// its gateway and the edge was counted twice.
func TestEdgeChecksDoNotSpendDeviceBuckets(t *testing.T) {
	log := &memLog{}
	s := hardeningServer(t, log, false)
	dev := "spiffe://city.example/zone/north/device/slc-n1" // lights-telemetry: 3/m
	atEdge := checkRequest("spiffe://city.example/zone/north/gateway/gw-north", "URI="+dev, "telemetry", "", "POST", "/api/v1/telemetry")
	atGateway := checkRequest(dev, "", "", "telemetry.city.example", "POST", "/api/v1/telemetry")
	// slc-n1's class needs no attestation in the test topology; what matters
	// is that the edge's answers are never 429.
	for i := range 10 {
		s.Check(context.Background(), atEdge)
		if d := log.last(); d.HTTPStatus == 429 {
			t.Fatalf("edge check %d was rate limited: %s", i+1, d.Reason)
		}
	}
	for i := range 3 {
		if resp, _ := s.Check(context.Background(), atGateway); resp.GetStatus().GetCode() != int32(codes.OK) {
			t.Fatalf("gateway check %d of 3 (3/m) was refused after edge checks: %s", i+1, log.last().Reason)
		}
	}
	if s.Check(context.Background(), atGateway); log.last().HTTPStatus != 429 {
		t.Fatalf("the 4th gateway check = %d %s, want 429", log.last().HTTPStatus, log.last().Reason)
	}
}

// TestDenyStormsAreAggregated is part of finding 2: past an asker's budget,
// its denies become one chained aggregate entry with their count, while
// another asker keeps its own budget and allows are always logged.
func TestDenyStormsAreAggregated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.log")
	l, stop := startDecisionLog(t, DecisionLogConfig{Path: path, Logger: discardLogger(), Denies: DenyBudget{PerSecond: 1, Burst: 10}})
	deny := func(caller string, i int) *Decision {
		d := sampleDecision(1) // odd: a deny
		d.Caller, d.Reason = caller, fmt.Sprint("denied ", i)
		return d
	}
	for i := range 10000 {
		l.Record(deny("spiffe://city.example/zone/north/gateway/gw-north", i))
	}
	for i := range 5 {
		l.Record(deny("spiffe://city.example/zone/south/gateway/gw-south", i))
		l.Record(sampleDecision(0)) // an allow
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st := l.Status()
	if st.Aggregated != 9990 || st.AggregateEntries != 1 || st.Written != 20 || st.Dropped != 0 {
		t.Fatalf("Status() = %+v, want 20 written (10 + 5 + 5 allows), 9990 folded into 1 aggregate entry", st)
	}
	rep := verifyLogFile(t, path)
	if rep.Entries != 21 {
		t.Fatalf("verified %d entries, want 21", rep.Entries)
	}
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	var agg aggregateEntry
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &agg); err != nil || agg.Count != 9990 || agg.LastReason != "denied 9999" ||
		agg.Caller != "spiffe://city.example/zone/north/gateway/gw-north" || agg.Aggregate != "denies" {
		t.Fatalf("last line = %s (%v), want the aggregate of gw-north's 9990 denies", lines[len(lines)-1], err)
	}
}

// TestTheVerifierChecksPastAnOversizeEntry: a line longer than MaxLogLine
// (an older writer made them) is checked by its chain fields and hash, and
// the lines after it are verified; before, verification stopped there.
func TestTheVerifierChecksPastAnOversizeEntry(t *testing.T) {
	var buf bytes.Buffer
	prev := zeroChainHash
	add := func(seq int, extra string) {
		line := fmt.Sprintf(`{"seq":%d,"prev":"%s","decision_id":"d%d","path":"%s"}`, seq, prev, seq, extra)
		buf.WriteString(line + "\n")
		sum := sha256.Sum256([]byte(line))
		prev = hex.EncodeToString(sum[:])
	}
	add(1, "/a")
	add(2, strings.Repeat(`\u0001`, 3<<20)) // 18 MiB
	add(3, "/b")
	add(4, "/c")
	log := bytes.Clone(buf.Bytes())
	rep, err := VerifyDecisionLog(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Entries != 4 || rep.Head != prev || len(rep.Unchecked) != 1 || rep.Unchecked[0].Line != 2 {
		t.Fatalf("report = %+v, want 4 entries, head %s, line 2 unchecked", rep, prev)
	}
	// An edit after the long line is still found.
	edited := bytes.Replace(log, []byte(`"path":"/b"`), []byte(`"path":"/x"`), 1)
	if _, err := VerifyDecisionLog(bytes.NewReader(edited)); err == nil || !strings.Contains(err.Error(), "line 3: edited") {
		t.Fatalf("err = %v, want line 3 edited", err)
	}
	// So is an edit of the long line itself.
	edited = bytes.Replace(log, []byte(`\u0001"`), []byte(`\u0002"`), 1)
	if _, err := VerifyDecisionLog(bytes.NewReader(edited)); err == nil || !strings.Contains(err.Error(), "line 2: edited") {
		t.Fatalf("err = %v, want line 2 edited", err)
	}
}

// TestAFullDiskDoesNotStopDecidingAndHeals: on a real file system that
// fills up (a 1 MiB tmpfs; needs root), the log degrades, drops and counts,
// and when space comes back it writes a gap entry and goes on with an
// intact chain.
func TestAFullDiskDoesNotStopDecidingAndHeals(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a small tmpfs (needs root): %v", err)
	}
	defer syscall.Unmount(dir, syscall.MNT_DETACH)
	filler := filepath.Join(dir, "filler")
	path := filepath.Join(dir, "decisions.log")
	l, stop := startDecisionLog(t, DecisionLogConfig{Path: path, Logger: discardLogger()})
	for i := range 100 {
		l.Record(sampleDecision(2 * i))
	}
	waitFor(t, "100 decisions written", func() bool { return l.Status().Written == 100 })
	// Fill the disk.
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for {
		if _, err := w.Write(make([]byte, 4096)); err != nil {
			break
		}
		if err := w.Flush(); err != nil {
			break
		}
	}
	f.Close()
	for i := 0; !l.Status().Degraded && i < 2000; i++ {
		l.Record(sampleDecision(2 * i))
		time.Sleep(time.Millisecond)
	}
	if !l.Status().Degraded {
		t.Fatal("the log did not degrade on a full disk")
	}
	l.Record(sampleDecision(0)) // dropped, not blocking
	os.Remove(filler)
	waitFor(t, "the log to heal", func() bool { return !l.Status().Degraded })
	l.Record(sampleDecision(0))
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st := l.Status()
	if st.Dropped == 0 || st.WriteFailures == 0 {
		t.Fatalf("Status() = %+v, want drops and a write failure counted", st)
	}
	rep := verifyLogFile(t, path) // fails on any break in the chain
	data, _ := os.ReadFile(path)
	if !bytes.Contains(data, []byte(`"gap":"write-failed"`)) {
		t.Fatalf("no gap entry in the healed log (%d entries)", rep.Entries)
	}
	// Every dropped decision is accounted for by a gap entry: those the
	// writer dropped and those Record turned away while the log was
	// degraded.
	var inGaps uint64
	for line := range bytes.Lines(data) {
		var gap struct {
			Gap     string `json:"gap"`
			Dropped uint64 `json:"dropped"`
		}
		if json.Unmarshal(line, &gap) == nil && gap.Gap == "write-failed" {
			inGaps += gap.Dropped
		}
	}
	if inGaps != st.Dropped {
		t.Fatalf("gap entries account for %d dropped decisions, the log dropped %d", inGaps, st.Dropped)
	}
}
