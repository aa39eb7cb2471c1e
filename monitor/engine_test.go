package monitor

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

var t0 = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

func dev(name string) topology.Subject { return topology.DeviceSubject(name) }

func decision(name string, at time.Time, allowed bool) *Event {
	ev := &Event{Kind: EventDecision, At: at.UnixNano(), SubKind: topology.KindDevice, Subject: name, Class: "sensor",
		Zone: "north", Gateway: "gw-1", Service: "telemetry", Method: "POST", Path: "/api/v1/telemetry", Allowed: allowed, Bytes: 200}
	if !allowed {
		ev.Cause = CauseNoFlow
	}
	return ev
}

// benign plays n sensors that each post telemetry about every 5 s with
// small random sizes, for the given time, and returns the findings.
func benign(e *Engine, n int, from time.Time, d time.Duration, seed uint64) []topology.Finding {
	rng := rand.New(rand.NewPCG(seed, 1))
	var found []topology.Finding
	for at := from; at.Before(from.Add(d)); at = at.Add(time.Second) {
		for i := range n {
			if rng.IntN(5) != 0 {
				continue
			}
			ev := decision(fmt.Sprintf("s-%d", i), at.Add(time.Duration(rng.IntN(1000))*time.Millisecond), true)
			ev.Bytes = int64(150 + rng.IntN(100))
			found = append(found, e.Observe(ev)...)
			acc := *ev
			acc.Kind, acc.RespBytes, acc.Status = EventAccess, 40, 200
			found = append(found, e.Observe(&acc)...)
		}
	}
	return found
}

func only(fs []topology.Finding, det string) []topology.Finding {
	var out []topology.Finding
	for _, f := range fs {
		if f.Detector == det {
			out = append(out, f)
		}
	}
	return out
}

func TestBenignFleetRaisesNothing(t *testing.T) {
	e := New(Config{Member: "m1"})
	if found := benign(e, 50, t0, 2*time.Hour, 1); len(found) > 0 {
		t.Fatalf("a benign fleet raised %d findings, first: %+v", len(found), found[0])
	}
	if st := e.Stats(); st.Subjects != 50 || st.AtRisk != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRateSpikeFiresOnceWithHysteresis(t *testing.T) {
	e := New(Config{Member: "m1"})
	benign(e, 20, t0, 20*time.Minute, 2)
	start := t0.Add(20 * time.Minute)
	var found []topology.Finding
	for i := range 200 { // 20 requests a second for 10 s
		found = append(found, e.Observe(decision("s-3", start.Add(time.Duration(i)*50*time.Millisecond), true))...)
	}
	spikes := only(found, DetRateSpike)
	if len(spikes) != 1 {
		t.Fatalf("want one rate-spike finding, got %d: %+v", len(spikes), found)
	}
	if spikes[0].Severity != topology.SeverityMedium || spikes[0].Evidence["requests"] == "" {
		t.Fatalf("finding %+v", spikes[0])
	}
	// It fired on the request that crossed the threshold, not at the
	// window's end.
	if spikes[0].At.Sub(start) > 2*time.Second {
		t.Fatalf("fired %v after the spike began", spikes[0].At.Sub(start))
	}
	// The next windows stay high: still firing, no new finding; then
	// calm, then a spike after the suppression period fires again.
	for i := range 200 {
		found = e.Observe(decision("s-3", start.Add(10*time.Second+time.Duration(i)*50*time.Millisecond), true))
		if len(only(found, DetRateSpike)) > 0 {
			t.Fatal("fired again while the rate stayed high")
		}
	}
	later := start.Add(6 * time.Minute)
	e.Observe(decision("s-3", later, true)) // closes the high window with a quiet one
	e.Observe(decision("s-3", later.Add(10*time.Second), true))
	found = nil
	for i := range 200 {
		found = append(found, e.Observe(decision("s-3", later.Add(20*time.Second+time.Duration(i)*50*time.Millisecond), true))...)
	}
	if len(only(found, DetRateSpike)) != 1 {
		t.Fatalf("after re-arming and suppression, want one finding, got %+v", found)
	}
}

func TestSuppressionLetsAWorseFindingThrough(t *testing.T) {
	e := New(Config{Member: "m1", Suppress: time.Minute})
	ev := &Event{Kind: EventSignal, At: t0.UnixNano(), SubKind: topology.KindDevice, Subject: "d", Class: "sensor", Name: "reboot"}
	if n := len(e.Observe(ev)); n != 1 {
		t.Fatalf("first reboot: %d findings", n)
	}
	ev.At += int64(10 * time.Second)
	if n := len(e.Observe(ev)); n != 0 {
		t.Fatalf("second reboot within the suppression period: %d findings", n)
	}
	ev.At += int64(time.Minute)
	if n := len(e.Observe(ev)); n != 1 {
		t.Fatalf("reboot after the suppression period: %d findings", n)
	}
	if st := e.Stats(); st.Suppressed != 1 {
		t.Fatalf("suppressed %d", st.Suppressed)
	}
	// Unknown identities: medium, then high once they pile up, though the
	// medium one suppresses the detector.
	gw := &Event{Kind: EventUnknownIdentity, At: t0.UnixNano(), SubKind: topology.KindGateway, Subject: "gw-1", Name: "spiffe://x/zone/n/device/rogue"}
	var sev []string
	for i := range unknownBurst {
		gw.At = t0.Add(time.Duration(i) * 100 * time.Millisecond).UnixNano()
		gw.Name = fmt.Sprintf("spiffe://x/zone/n/device/rogue-%d", i)
		for _, f := range e.Observe(gw) {
			sev = append(sev, f.Severity)
		}
	}
	if strings.Join(sev, ",") != "medium,high" {
		t.Fatalf("unknown identities raised %v", sev)
	}
	// One identity retrying is one, however often.
	one := &Event{Kind: EventUnknownIdentity, SubKind: topology.KindGateway, Subject: "gw-2", Name: "spiffe://x/zone/n/device/gone"}
	var n int
	for i := range 50 {
		one.At = t0.Add(time.Duration(i) * 10 * time.Millisecond).UnixNano()
		n += len(e.Observe(one))
	}
	if r := e.RiskOf(topology.GatewaySubject("gw-2"), t0.Add(time.Second)); n != 1 || r.Score != 35 {
		t.Fatalf("one identity 50 times: %d findings, risk %d", n, r.Score)
	}
}

func TestExfiltrationToANewDestination(t *testing.T) {
	e := New(Config{Member: "m1"})
	benign(e, 20, t0, 20*time.Minute, 3)
	at := t0.Add(20 * time.Minute)
	ev := decision("s-5", at, false)
	ev.Service, ev.Path, ev.Bytes = "exfil.example.net", "/upload", 5<<20
	found := e.Observe(ev)
	if len(only(found, DetNewDestination)) != 1 || len(only(found, DetSize)) != 1 {
		t.Fatalf("want new-destination and size-outlier, got %+v", found)
	}
	if f := only(found, DetSize)[0]; f.Severity != topology.SeverityHigh {
		t.Fatalf("a 5 MiB request from a 200-byte sensor is %s", f.Severity)
	}
	if r := e.RiskOf(dev("s-5"), at); r.Score != 100 || len(r.Signals) != 2 {
		t.Fatalf("risk %+v", r)
	}
	// The same destination again is not new.
	ev.At += int64(time.Second)
	if found := e.Observe(ev); len(only(found, DetNewDestination)) != 0 {
		t.Fatalf("the destination was new twice: %+v", found)
	}
	// A destination another device of the class uses, allowed, is not new
	// when denied to this one for another reason.
	ev2 := decision("s-6", at, false)
	if found := e.Observe(ev2); len(only(found, DetNewDestination)) != 0 {
		t.Fatalf("the class's own destination counted as new: %+v", found)
	}
}

func TestScanAndCrossZone(t *testing.T) {
	e := New(Config{Member: "m1"})
	var found []topology.Finding
	for i := range 12 {
		ev := decision("cam-1", t0.Add(time.Duration(i)*100*time.Millisecond), false)
		ev.Service, ev.Path = fmt.Sprintf("10.0.0.%d", i), "/"
		ev.Cause, ev.CrossZone = CauseUnknownService, i%2 == 0
		found = append(found, e.Observe(ev)...)
	}
	bursts := only(found, DetDeniedBurst)
	if len(bursts) != 1 || bursts[0].Severity != topology.SeverityHigh {
		t.Fatalf("want one high denied-burst, got %+v", bursts)
	}
	if len(only(found, DetCrossZone)) != 1 {
		t.Fatalf("cross-zone findings: %+v (suppressed after the first)", only(found, DetCrossZone))
	}
	if r := e.RiskOf(dev("cam-1"), t0.Add(2*time.Second)); r.Score < 80 {
		t.Fatalf("a scanning camera's risk is %d", r.Score)
	}
	// Rate-limited requests are not destinations.
	e2 := New(Config{Member: "m1"})
	found = nil
	for i := range 6 {
		ev := decision("d", t0.Add(time.Duration(i)*time.Millisecond), false)
		ev.Cause = CauseRateLimited
		found = append(found, e2.Observe(ev)...)
	}
	if len(found) != 1 || found[0].Detector != DetRateLimited || found[0].Severity != topology.SeverityLow {
		t.Fatalf("rate-limit hits raised %+v", found)
	}
}

func TestVolumeOutlier(t *testing.T) {
	e := New(Config{Member: "m1"})
	benign(e, 20, t0, 20*time.Minute, 4)
	at := t0.Add(20 * time.Minute)
	var found []topology.Finding
	for i := range 40 {
		ev := &Event{Kind: EventAccess, At: at.Add(time.Duration(i) * 100 * time.Millisecond).UnixNano(), SubKind: topology.KindDevice,
			Subject: "s-1", Class: "sensor", Service: "telemetry", Method: "GET", Path: "/api/v1/telemetry", Allowed: true, Bytes: 100, RespBytes: 4000, Status: 200}
		found = append(found, e.Observe(ev)...)
	}
	if len(only(found, DetVolume)) != 1 {
		t.Fatalf("want one volume-outlier, got %+v", found)
	}
}

func TestAttestationReplayTamperAreImmediate(t *testing.T) {
	e := New(Config{Member: "m1"})
	for _, c := range []struct {
		ev   Event
		det  string
		risk int
	}{
		{Event{Kind: EventAttestation, Name: "tpm2-quote", Detail: "PCR 16 does not match"}, DetAttestation, 60},
		{Event{Kind: EventReplay, Name: "tpm2-quote"}, DetReplay, 90},
		{Event{Kind: EventSignal, Name: "tamper", Detail: "enclosure opened"}, DetTamper, 90},
	} {
		ev := c.ev
		ev.At, ev.SubKind, ev.Subject, ev.Class = t0.UnixNano(), topology.KindDevice, "d-"+c.det, "sensor"
		found := e.Observe(&ev)
		if len(found) != 1 || found[0].Detector != c.det {
			t.Fatalf("%s: %+v", c.det, found)
		}
		if r := e.RiskOf(ev.Subj(), t0); r.Score != c.risk {
			t.Fatalf("%s: risk %d, want %d", c.det, r.Score, c.risk)
		}
	}
}

func TestRiskDecaysAndIsPublishedInSteps(t *testing.T) {
	e := New(Config{Member: "m1", HalfLife: 10 * time.Minute})
	ev := &Event{Kind: EventAttestation, At: t0.UnixNano(), SubKind: topology.KindDevice, Subject: "d", Class: "sensor", Name: "eat"}
	e.Observe(ev)
	p := e.Pending(t0, true)
	if len(p) != 1 || p[0].Score != 60 {
		t.Fatalf("pending %+v", p)
	}
	e.Published(dev("d"), 60, t0)
	if p := e.Pending(t0.Add(time.Second), true); len(p) != 0 {
		t.Fatalf("nothing changed, yet pending %+v", p)
	}
	if r := e.RiskOf(dev("d"), t0.Add(10*time.Minute)); r.Score != 30 {
		t.Fatalf("after one half-life risk is %d", r.Score)
	}
	p = e.Pending(t0.Add(10*time.Minute), true)
	if len(p) != 1 || p[0].Score != 30 {
		t.Fatalf("decayed: pending %+v", p)
	}
	e.Published(dev("d"), 30, t0.Add(10*time.Minute))
	p = e.Pending(t0.Add(2*time.Hour), true)
	if len(p) != 1 || p[0].Score != 0 {
		t.Fatalf("after 12 half-lives: pending %+v", p)
	}
	e.Published(dev("d"), 0, t0.Add(2*time.Hour))
	if p := e.Pending(t0.Add(2*time.Hour), true); len(p) != 0 || e.Stats().AtRisk != 0 {
		t.Fatalf("risk 0 published, still %+v", p)
	}
	// Findings add up, capped at 100.
	for i := range 3 {
		ev := &Event{Kind: EventSignal, At: t0.Add(time.Duration(i) * time.Second).UnixNano(), SubKind: topology.KindDevice, Subject: fmt.Sprintf("t%d", i), Class: "sensor", Name: "tamper"}
		e.Observe(ev)
	}
	e.Observe(&Event{Kind: EventReplay, At: t0.UnixNano(), SubKind: topology.KindDevice, Subject: "t0", Class: "sensor"})
	if r := e.RiskOf(dev("t0"), t0); r.Score != 100 {
		t.Fatalf("tamper + replay: %d", r.Score)
	}
}

func TestLearningAlertsButNeverRaisesRisk(t *testing.T) {
	e := New(Config{Member: "m1", Learning: func(c string) time.Duration {
		if c == "camera" {
			return time.Hour
		}
		return 0
	}})
	cam := &Event{Kind: EventSignal, At: t0.UnixNano(), SubKind: topology.KindDevice, Subject: "cam", Class: "camera", Name: "tamper"}
	found := e.Observe(cam)
	if len(found) != 1 || !found[0].Learning {
		t.Fatalf("learning class: %+v", found)
	}
	if r := e.RiskOf(dev("cam"), t0); r.Score != 0 {
		t.Fatalf("a learning class's finding raised risk to %d", r.Score)
	}
	cam2 := *cam
	cam2.Subject, cam2.At = "cam2", t0.Add(61*time.Minute).UnixNano()
	found = e.Observe(&cam2)
	if len(found) != 1 || found[0].Learning {
		t.Fatalf("after learning: %+v", found)
	}
	if r := e.RiskOf(dev("cam2"), cam2.Time()); r.Score != 90 {
		t.Fatalf("after learning risk is %d", r.Score)
	}
}

func TestSeedTakesOverReplicatedRisk(t *testing.T) {
	e := New(Config{Member: "m2"})
	e.Seed(dev("d"), "sensor", &topology.Risk{Score: 60, UpdatedAt: t0, Signals: []topology.Signal{
		{Name: DetAttestation, Score: 60, Severity: topology.SeverityHigh, At: t0, Finding: "f-1"}}})
	if r := e.RiskOf(dev("d"), t0.Add(10*time.Minute)); r.Score != 30 || r.Signals[0].Finding != "f-1" {
		t.Fatalf("seeded risk %+v", r)
	}
	if p := e.Pending(t0, true); len(p) != 0 {
		t.Fatalf("seeded risk is already published: %+v", p)
	}
	e.Forget(dev("d"))
	if r := e.RiskOf(dev("d"), t0); r.Score != 0 {
		t.Fatalf("forgotten risk %d", r.Score)
	}
}

func TestCheckpointRoundTrip(t *testing.T) {
	e := New(Config{Member: "m1"})
	benign(e, 30, t0, 20*time.Minute, 5)
	e.Observe(&Event{Kind: EventReplay, At: t0.Add(20 * time.Minute).UnixNano(), SubKind: topology.KindDevice, Subject: "s-1", Class: "sensor"})
	var buf bytes.Buffer
	if err := e.Save(&buf); err != nil {
		t.Fatal(err)
	}
	raw := buf.Bytes()
	e2 := New(Config{Member: "m1"})
	if err := e2.Load(bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	if a, b := e.Stats(), e2.Stats(); a.Subjects != b.Subjects || a.Classes != b.Classes || a.AtRisk != b.AtRisk {
		t.Fatalf("stats before %+v after %+v", a, b)
	}
	if a, b := e.RiskOf(dev("s-1"), t0), e2.RiskOf(dev("s-1"), t0); a.Score != b.Score || a.Score == 0 {
		t.Fatalf("risk before %d after %d", a.Score, b.Score)
	}
	// The restored baselines judge as the old ones did: the same spike
	// fires on both.
	spike := func(e *Engine) int {
		n := 0
		for i := range 200 {
			n += len(only(e.Observe(decision("s-2", t0.Add(30*time.Minute+time.Duration(i)*50*time.Millisecond), true)), DetRateSpike))
		}
		return n
	}
	if a, b := spike(e), spike(e2); a != 1 || b != 1 {
		t.Fatalf("spike findings before %d after %d", a, b)
	}
	// Corrupt or cut checkpoints are refused and change nothing.
	for name, bad := range map[string][]byte{
		"cut":     raw[:len(raw)/2],
		"flipped": append(append([]byte{}, raw[:100]...), append([]byte{raw[100] ^ 1}, raw[101:]...)...),
		"foreign": []byte("hello"),
	} {
		e3 := New(Config{Member: "m1"})
		e3.Observe(decision("keep", t0, true))
		if err := e3.Load(bytes.NewReader(bad)); err == nil {
			t.Fatalf("%s checkpoint loaded", name)
		}
		if e3.Stats().Subjects != 1 {
			t.Fatalf("%s checkpoint changed the engine", name)
		}
	}
}

func FuzzLoadCheckpoint(f *testing.F) {
	e := New(Config{Member: "m1"})
	benign(e, 3, t0, time.Minute, 6)
	var buf bytes.Buffer
	if err := e.Save(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte(checkpointMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		e := New(Config{Member: "m1"})
		_ = e.Load(bytes.NewReader(b))
		e.Observe(decision("x", t0, true))
	})
}

func FuzzObserve(f *testing.F) {
	f.Add(uint8(1), int64(0), "d", "svc", "/a/b/c", false, "no-flow", int64(10), "tamper")
	f.Fuzz(func(t *testing.T, kind uint8, at int64, name, svc, path string, allowed bool, cause string, n int64, sig string) {
		e := New(Config{Member: "m1"})
		ev := &Event{Kind: EventKind(kind), At: at, SubKind: topology.KindDevice, Subject: name, Service: svc, Path: path,
			Allowed: allowed, Cause: cause, Bytes: n, Name: sig}
		ev.Clip()
		for range 3 {
			for _, f := range e.Observe(ev) {
				if f.Score < 0 || f.Score > 100 || f.Subject.Name != ev.Subject {
					t.Fatalf("finding %+v", f)
				}
			}
			ev.At += int64(time.Second)
		}
		if r := e.RiskOf(ev.Subj(), ev.Time()); r.Score < 0 || r.Score > 100 {
			t.Fatalf("risk %d", r.Score)
		}
	})
}

func TestClip(t *testing.T) {
	ev := &Event{Subject: strings.Repeat("é", 300), Detail: strings.Repeat("x", 1000), Bytes: -5}
	ev.Clip()
	if len(ev.Subject) > maxField || !strings.HasSuffix(ev.Subject, "é") || len(ev.Detail) != maxDetail || ev.Bytes != 0 {
		t.Fatalf("clipped to %d %q… %d %d", len(ev.Subject), ev.Subject[len(ev.Subject)-4:], len(ev.Detail), ev.Bytes)
	}
	if d := destination(&Event{Service: "s", Method: "GET", Path: "/api/v1/readings/81?x=1"}); d != "s GET /api/v1" {
		t.Fatal(d)
	}
}

func TestRingOwnersAgreeAndMoveLittle(t *testing.T) {
	a := NewRing([]string{"m1", "m2", "m3"})
	b := NewRing([]string{"m3", "m1", "m2", "m1"})
	four := NewRing([]string{"m1", "m2", "m3", "m4"})
	count := map[string]int{}
	moved := 0
	for i := range 30000 {
		s := dev(fmt.Sprintf("d-%d", i))
		o := a.Owner(s)
		if o != b.Owner(s) {
			t.Fatal("two rings over the same members disagree")
		}
		count[o]++
		if o4 := four.Owner(s); o4 != o {
			if o4 != "m4" {
				t.Fatalf("%s moved from %s to %s, not to the new member", s, o, o4)
			}
			moved++
		}
	}
	for m, n := range count {
		if n < 9000 || n > 11000 {
			t.Fatalf("member %s owns %d of 30000", m, n)
		}
	}
	if moved < 6500 || moved > 8500 {
		t.Fatalf("adding a fourth member moved %d of 30000", moved)
	}
	if NewRing(nil).Owner(dev("x")) != "" {
		t.Fatal("empty ring has an owner")
	}
}

func TestAFloodOfRefusalsIsABurst(t *testing.T) {
	e := New(Config{Member: "m1"})
	var found []topology.Finding
	for i := range 40 {
		ev := decision("d", t0.Add(time.Duration(i)*20*time.Millisecond), false)
		ev.Cause = CauseRateLimited
		found = append(found, e.Observe(ev)...)
	}
	if len(only(found, DetRateLimited)) != 1 || len(only(found, DetDeniedBurst)) != 1 || only(found, DetDeniedBurst)[0].Severity != topology.SeverityMedium {
		t.Fatalf("a flood of rate-limited requests raised %+v", found)
	}
}

func TestAFiringDetectorKeepsItsWindowsOutOfTheBaseline(t *testing.T) {
	e := New(Config{Member: "m1"})
	benign(e, 20, t0, 20*time.Minute, 9)
	before := e.class["sensor"].rate
	at := t0.Add(20 * time.Minute)
	for w := range 6 { // a minute of flooding, one finding then firing
		for i := range 200 {
			e.Observe(decision("s-4", at.Add(time.Duration(w)*10*time.Second+time.Duration(i)*50*time.Millisecond), true))
		}
	}
	e.Observe(decision("s-4", at.Add(2*time.Minute), true)) // closes the last flooded window
	if after := e.class["sensor"].rate; after.Mean > 2*before.Mean+1 {
		t.Fatalf("the flood was learned: class rate mean %.2f → %.2f", before.Mean, after.Mean)
	}
}

func TestABurstAfterAQuietGapFiresAgain(t *testing.T) {
	e := New(Config{Member: "m1", Suppress: time.Minute})
	scans := 0
	for k := range 4 { // a scan every 10 minutes, nothing in between
		for i := range 12 {
			ev := decision("cam-9", t0.Add(time.Duration(k)*10*time.Minute+time.Duration(i)*100*time.Millisecond), false)
			ev.Service, ev.Path, ev.Cause = fmt.Sprintf("10.1.%d.%d", k, i), "/", CauseUnknownService
			scans += len(only(e.Observe(ev), DetDeniedBurst))
		}
	}
	if scans != 4 {
		t.Fatalf("four scans 10 minutes apart raised %d denied-burst findings", scans)
	}
}
