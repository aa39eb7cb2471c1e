package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// fleetSize is the generated document the failover test writes to; every
// write quarantines a device no earlier write touched.
const fleetSize = 3000

func TestFailoverKeepsEveryAcknowledgedWrite(t *testing.T) {
	c := startCluster(t, 3)
	all := []int{0, 1, 2}

	_, example := smartCity(t)
	f := aFollower(t, c)
	exampleRev, err := c.Client(f).ApplyTopology(ctxFor(t, 30*time.Second), example)
	if err != nil {
		t.Fatalf("apply the smart-city example through follower %s: %v", c.Member(f).ID, err)
	}
	checkDocument(t, c, all, exampleRev, exampleRev, smartCityDevices)

	doc, err := json.Marshal(topologytest.Generate(topologytest.Spec{Zones: 3, GatewaysPerZone: 10, Devices: fleetSize}))
	if err != nil {
		t.Fatal(err)
	}
	f = aFollower(t, c)
	docRev, err := c.Client(f).ApplyTopology(ctxFor(t, time.Minute), doc)
	if err != nil {
		t.Fatalf("apply a %d-device document through follower %s: %v", fleetSize, c.Member(f).ID, err)
	}
	checkDocument(t, c, all, docRev, docRev, fleetSize)
	if t.Failed() {
		t.FailNow()
	}

	w := startWriter(c)
	time.Sleep(time.Second)
	leader, err := c.Leader()
	if err != nil {
		w.stop(t)
		t.Fatal(err)
	}
	w.exclude(leader)
	killedAt := time.Now()
	if err := c.Kill(leader); err != nil {
		w.stop(t)
		t.Fatal(err)
	}
	select {
	case <-time.After(3 * time.Second):
	case <-w.done: // every device has been written to
	}
	// A slow election must not make the test flaky: keep writing (bounded)
	// until some write sent after the kill is acknowledged.
	for wait := time.Now().Add(20 * time.Second); w.acksSentAfter(killedAt) == 0 && !w.finished() && time.Now().Before(wait); {
		time.Sleep(100 * time.Millisecond)
	}
	res := w.stop(t)

	before, after := 0, 0
	var failover, firstAck time.Duration = -1, -1
	for _, a := range res.acks {
		switch {
		case a.acked.Before(killedAt):
			before++
		case a.sent.After(killedAt):
			after++
			if failover < 0 {
				failover = a.acked.Sub(killedAt)
			}
		}
		if firstAck < 0 && a.acked.After(killedAt) {
			firstAck = a.acked.Sub(killedAt)
		}
	}
	t.Logf("writes: %d acknowledged (%d before the kill of leader %s, %d sent after it), %d failed; "+
		"failover (kill -> first acknowledged write sent after it): %v; first acknowledgement after the kill: %v",
		len(res.acks), before, c.Member(leader).ID, after, res.errors, failover, firstAck)
	for _, e := range res.sampleErrs {
		t.Logf("  a failed write: %s", e)
	}
	for _, p := range res.badAcks {
		t.Errorf("acknowledged write with a wrong answer: %s", p)
	}
	if res.exhausted {
		t.Logf("the writer quarantined all %d devices and stopped early", fleetSize)
	}
	if before == 0 || after == 0 {
		t.Fatalf("want writes acknowledged both before and after the kill; got %d before, %d after", before, after)
	}
	maxRev := res.maxRevision()

	survivors := c.RunningMembers()
	checkAcks(t, c, survivors, docRev, maxRev, res.acks)

	if err := c.Restart(leader); err != nil {
		t.Fatalf("restart the killed leader %s: %v", c.Member(leader).ID, err)
	}
	if err := c.WaitReady(); err != nil {
		t.Fatal(err)
	}
	checkAcks(t, c, []int{leader}, docRev, maxRev, res.acks)

	for i := range all {
		if err := c.Kill(i); err != nil {
			t.Fatal(err)
		}
	}
	for i := range all {
		if err := c.Restart(i); err != nil {
			t.Fatalf("restart %s after killing every member: %v", c.Member(i).ID, err)
		}
	}
	if err := c.WaitReady(); err != nil {
		t.Fatalf("after killing and restarting every member: %v", err)
	}
	checkAcks(t, c, all, docRev, maxRev, res.acks)

	// And every member shuts down cleanly on SIGTERM, the last ones
	// without a quorum.
	for i := range all {
		start := time.Now()
		if err := c.Stop(i); err != nil {
			t.Errorf("%v", err)
		}
		t.Logf("%s stopped on SIGTERM in %v", c.Member(i).ID, time.Since(start).Round(time.Millisecond))
	}
}

// ack is one acknowledged quarantine.
type ack struct {
	device, reason string
	member         int
	rev            topology.Revision
	sent, acked    time.Time
}

type writeResult struct {
	acks       []ack
	errors     int
	sampleErrs []string
	badAcks    []string
	exhausted  bool
}

func (r *writeResult) maxRevision() topology.Revision {
	var m topology.Revision
	for _, a := range r.acks {
		m = max(m, a.rev)
	}
	return m
}

// writer quarantines a new device with each write, sequentially and
// without pause, round-robin over the members it has not been told to
// avoid, so that most writes are forwarded to the leader.
type writer struct {
	c        *harness.Cluster
	mu       sync.Mutex // guards excluded and res.acks
	excluded map[int]bool
	res      writeResult
	quit     chan struct{}
	done     chan struct{}
}

func startWriter(c *harness.Cluster) *writer {
	w := &writer{c: c, excluded: map[int]bool{}, quit: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

// exclude stops new writes from going to member i.
func (w *writer) exclude(i int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.excluded[i] = true
}

func (w *writer) target(seq int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var live []int
	for i := range w.c.Size() {
		if !w.excluded[i] {
			live = append(live, i)
		}
	}
	return live[seq%len(live)]
}

func (w *writer) run() {
	defer close(w.done)
	clients := make([]*api.Client, w.c.Size())
	for i := range clients {
		clients[i] = w.c.Client(i)
	}
	for seq := 0; ; seq++ {
		select {
		case <-w.quit:
			return
		default:
		}
		if seq >= fleetSize { // no new device left
			w.res.exhausted = true
			return
		}
		i := w.target(seq)
		device, reason := topologytest.DeviceName(seq), fmt.Sprintf("w-%d", seq)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		sent := time.Now()
		s, err := clients[i].Quarantine(ctx, topology.KindDevice, device, reason)
		cancel()
		if err != nil {
			w.res.errors++
			if len(w.res.sampleErrs) < 5 {
				w.res.sampleErrs = append(w.res.sampleErrs, fmt.Sprintf("%s via %s after %v: %v",
					device, w.c.Member(i).ID, time.Since(sent).Round(time.Millisecond), err))
			}
			continue
		}
		if s.Name != device || !s.Quarantined || s.State == nil || s.State.Quarantine == nil || s.State.Quarantine.Reason != reason {
			w.res.badAcks = append(w.res.badAcks, fmt.Sprintf("quarantine %s (reason %q) via %s answered %+v", device, reason, w.c.Member(i).ID, s))
		}
		w.mu.Lock()
		w.res.acks = append(w.res.acks, ack{device: device, reason: reason, member: i, rev: s.Revision, sent: sent, acked: time.Now()})
		w.mu.Unlock()
	}
}

// acksSentAfter counts the acknowledged writes sent after t.
func (w *writer) acksSentAfter(t time.Time) int {
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

// finished reports whether the writer has stopped by itself.
func (w *writer) finished() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// stop ends the writer after its current write and returns what it did.
func (w *writer) stop(t *testing.T) *writeResult {
	t.Helper()
	close(w.quit)
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the writer did not stop within 30s of being told to (each of its writes is bounded at 15s)")
	}
	return &w.res
}

// checkAcks asserts that each member, read at revision minRev or later,
// still holds the document of docRev and every acknowledged quarantine with
// exactly its reason.
func checkAcks(t *testing.T, c *harness.Cluster, members []int, docRev, minRev topology.Revision, acks []ack) {
	t.Helper()
	checkDocument(t, c, members, docRev, minRev, fleetSize)
	for _, i := range members {
		cl := c.Client(i)
		cl.MinRevision = minRev
		problems := make(chan string, len(acks))
		work := make(chan ack)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for a := range work {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					s, err := cl.Subject(ctx, topology.KindDevice, a.device)
					cancel()
					switch {
					case err != nil:
						problems <- fmt.Sprintf("%s: %v", a.device, err)
					case !s.Quarantined || s.State == nil || s.State.Quarantine == nil:
						problems <- fmt.Sprintf("%s (acknowledged at revision %d): not quarantined at revision %d", a.device, a.rev, s.Revision)
					case s.State.Quarantine.Reason != a.reason:
						problems <- fmt.Sprintf("%s: reason %q, want %q", a.device, s.State.Quarantine.Reason, a.reason)
					}
				}
			})
		}
		for _, a := range acks {
			work <- a
		}
		close(work)
		wg.Wait()
		close(problems)
		var list []string
		for p := range problems {
			list = append(list, p)
		}
		if len(list) > 0 {
			t.Errorf("%s: %d of %d acknowledged writes are not as acknowledged (read at revision >= %d), e.g.:\n  %s",
				c.Member(i).ID, len(list), len(acks), minRev, strings.Join(list[:min(len(list), 10)], "\n  "))
		}
	}
}

// docError is one problem planted in a document, and where.
type docError struct {
	path    string
	line    int
	message string // a fragment of the message
}

// breakExample plants problems in the smart-city example and says where
// each one is.
func breakExample(t *testing.T, example []byte) ([]byte, []docError) {
	t.Helper()
	doc := string(example)
	var want []docError
	// plant replaces old by new; the problem is reported on the line that
	// holds marker.
	plant := func(path, old, new, marker, message string) {
		t.Helper()
		if n := strings.Count(doc, old); n != 1 {
			t.Fatalf("the example holds %q %d times; want exactly once", old, n)
		}
		doc = strings.Replace(doc, old, new, 1)
		if n := strings.Count(doc, marker); n != 1 {
			t.Fatalf("the broken example holds %q %d times; want exactly once", marker, n)
		}
		before, _, _ := strings.Cut(doc, marker)
		want = append(want, docError{path: path, line: strings.Count(before, "\n") + 1, message: message})
	}
	plant("devices[3].class",
		"{name: slc-n1-004, class: streetlight,", "{name: slc-n1-004, class: streetlite,",
		"class: streetlite", `unknown device class "streetlite"`)
	plant("deviceClasses[1].rateLimit",
		"rateLimit: 30/m\n", "rateLimit: 30/minute\n",
		"rateLimit: 30/minute", `"30/minute"`)
	plant("services[1].protocol",
		"    protocol: http\n    hosts: [video.city.example]", "    protocol: https\n    hosts: [video.city.example]",
		"protocol: https", `unknown protocol "https"`)
	plant("flows[0].to.service",
		"- name: aq-telemetry\n    from: {zones: [north, south], classes: [air-quality]}\n    to: {service: telemetry}",
		"- name: aq-telemetry\n    from: {zones: [north, south], classes: [air-quality]}\n    to: {service: telemetri}",
		"service: telemetri}", `unknown service "telemetri"`)
	return []byte(doc), want
}

func TestBadDocumentThroughTheCLIChangesNothing(t *testing.T) {
	c := startCluster(t, 3)
	all := []int{0, 1, 2}
	_, example := smartCity(t)
	rev, err := c.Client(0).ApplyTopology(ctxFor(t, 30*time.Second), example)
	if err != nil {
		t.Fatalf("apply the smart-city example: %v", err)
	}
	checkDocument(t, c, all, rev, rev, smartCityDevices)

	bad, want := breakExample(t, example)
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	f := aFollower(t, c)

	res := runCLI(t, []string{"VIGIL_TOKEN_FILE=" + c.TokenFile()},
		"topology", "apply", "-f", path, "--server", c.Member(f).APIAddr)
	if res.code == 0 {
		t.Errorf("vigil topology apply of a bad document: want a non-zero exit, got %s", res)
	}
	for _, w := range want {
		if at := fmt.Sprintf("line %d: %s: ", w.line, w.path); !strings.Contains(res.stderr, at) || !strings.Contains(res.stderr, w.message) {
			t.Errorf("vigil topology apply: stderr does not report %q with %q; stderr:\n%s", at, w.message, res.stderr)
		}
	}

	// The same document straight to the API, past the CLI's own check.
	_, err = c.Client(f).ApplyTopology(ctxFor(t, 30*time.Second), bad)
	if err == nil {
		t.Fatalf("PUT /v1/topology of a bad document through %s: want an error, got none", c.Member(f).ID)
	}
	apiErr := asAPIError(t, err)
	if apiErr.Status != 422 || apiErr.Code != api.CodeInvalidDocument {
		t.Errorf("PUT /v1/topology of a bad document: got status %d code %q, want 422 %q", apiErr.Status, apiErr.Code, api.CodeInvalidDocument)
	}
	if len(apiErr.Errors) != len(want) {
		t.Errorf("PUT /v1/topology of a bad document: got %d field errors, want %d:\n%v", len(apiErr.Errors), len(want), apiErr)
	}
	for _, w := range want {
		found := false
		for _, fe := range apiErr.Errors {
			if fe.Path == w.path && fe.Line == w.line && strings.Contains(fe.Message, w.message) {
				found = true
			}
		}
		if !found {
			t.Errorf("PUT /v1/topology: no field error at %s, line %d, with %q; got:\n%v", w.path, w.line, w.message, apiErr)
		}
	}

	// Nothing changed, anywhere.
	for _, i := range all {
		top, err := c.Client(i).Topology(ctxFor(t, 10*time.Second))
		if err != nil {
			t.Errorf("%s: GET /v1/topology: %v", c.Member(i).ID, err)
			continue
		}
		if top.Revision != rev || top.DocumentRevision != rev || len(top.Document.Devices) != smartCityDevices {
			t.Errorf("%s after the rejected document: revision %d, document revision %d, %d devices; want %d, %d, %d",
				c.Member(i).ID, top.Revision, top.DocumentRevision, len(top.Document.Devices), rev, rev, smartCityDevices)
		}
	}
}
