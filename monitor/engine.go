package monitor

import (
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"sync"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// Detector names, as findings carry them.
const (
	DetNewDestination = "new-destination" // a destination never seen for the device and its class
	DetRateSpike      = "rate-spike"      // requests per window far above the baseline
	DetVolume         = "volume-outlier"  // bytes per window far above the baseline
	DetSize           = "size-outlier"    // one request far larger than the baseline
	DetDeniedBurst    = "denied-burst"    // many denied requests (a scan, lateral movement)
	DetCrossZone      = "cross-zone"      // a denied attempt at another zone's service
	DetRateLimited    = "rate-limited"    // repeated rate-limit hits
	DetAttestation    = "attestation-failed"
	DetReplay         = "nonce-replay"
	DetUnknownID      = "unknown-identity" // identities a gateway may not use (rogue join)
	DetTamper         = "tamper"
	DetSignal         = "signal" // another gateway signal (reboot, …)
)

// detectors indexes per-subject suppression; the order is fixed (it is
// part of the checkpoint format).
var detectors = [...]string{DetNewDestination, DetRateSpike, DetVolume, DetSize, DetDeniedBurst, DetCrossZone,
	DetRateLimited, DetAttestation, DetReplay, DetUnknownID, DetTamper, DetSignal}

const numDetectors = len(detectors)

func detectorIndex(name string) int {
	for i, d := range detectors {
		if d == name {
			return i
		}
	}
	return -1
}

// SeverityScore is the risk a new finding of a severity adds.
func SeverityScore(sev string) int {
	switch sev {
	case topology.SeverityLow:
		return 15
	case topology.SeverityMedium:
		return 35
	case topology.SeverityHigh:
		return 60
	case topology.SeverityCritical:
		return 90
	}
	return 0
}

// Config tunes the engine; zero values take the defaults.
type Config struct {
	// Window is the baseline and counting window (default 10s). Detectors
	// fire as soon as a window's count crosses its threshold, not at its
	// end.
	Window time.Duration
	// Warmup is how many windows a device's own baseline needs before it
	// replaces its class's (default 30: five minutes).
	Warmup int
	// ClassWarmup is how many samples a class baseline needs before the
	// statistical detectors use it (default 50).
	ClassWarmup int
	// HalfLife is how fast a finding's risk decays (default 10m).
	HalfLife time.Duration
	// Suppress is how long a detector stays quiet for a subject after it
	// fired, unless it finds something more severe (default 5m).
	Suppress time.Duration
	// Learning gives a class's learning period (response.learning): its
	// findings alert and never raise risk until it has passed since the
	// monitor first saw the class.
	Learning func(class string) time.Duration
	// Member names the member in finding IDs.
	Member string
}

func (c *Config) defaults() {
	if c.Window <= 0 {
		c.Window = 10 * time.Second
	}
	if c.Warmup <= 0 {
		c.Warmup = 30
	}
	if c.ClassWarmup <= 0 {
		c.ClassWarmup = 50
	}
	if c.HalfLife <= 0 {
		c.HalfLife = 10 * time.Minute
	}
	if c.Suppress <= 0 {
		c.Suppress = 5 * time.Minute
	}
	if c.Learning == nil {
		c.Learning = func(string) time.Duration { return 0 }
	}
}

// Learning rates: a device's baseline follows it over minutes, a class's
// over hours.
const (
	alphaDevice     = 0.05
	alphaClass      = 0.005
	alphaSizeDevice = 0.05
	alphaSizeClass  = 0.002
)

// Thresholds: mean + k·sd + floor, per quantity. The lower (re-arm)
// threshold of the hysteresis uses kLow and half the floor.
const (
	kHigh, kLow      = 6.0, 3.0
	rateFloor        = 5.0
	volumeFloor      = 32 << 10
	sizeK, sizeFloor = 8.0, 4096.0
	sizeHighFactor   = 10.0
	burstDenies      = 10 // denies in a window …
	burstTargets     = 4  // … at this many distinct destinations: a scan
	repeatedDenies   = 30 // denies in a window at any destinations
	limitedHits      = 5
	floodHits        = 50
	payloadBytes     = 64 << 10 // a request body this large toward a new destination is exfiltration-shaped
	unknownBurst     = 5
)

// devState is what the monitor keeps per device or gateway: the current
// window's counters, its baselines, detector state and a Bloom filter of
// the destinations it used. About 200 bytes.
type devState struct {
	class      string
	win        int64 // current window number
	reqs       uint32
	denies     uint32
	limited    uint16
	bytes      uint64
	targets    uint64               // bit set of denied destinations in the window
	unknownIDs uint64               // identities a gateway may not present, seen in the window (bit set)
	windows    uint32               // windows learned from
	firing     uint16               // detectors firing (hysteresis), by index
	anomaly    bool                 // this window raised a finding: it is not learned from
	rate       ewma                 // requests per window
	volume     ewma                 // bytes per window
	size       ewma                 // bytes per request
	quiet      [numDetectors]uint32 // suppressed until, seconds since the engine's epoch
	quietSv    [numDetectors]uint8  // severity rank the suppression is for
	seen       [8]uint64            // destinations used (512-bit Bloom filter)
}

// classState is a class's peer-group baseline, learned from every window
// of every device of the class this member owns.
type classState struct {
	rate, volume, size    ewma
	rateN, volumeN, sizeN uint64
	seen                  bloom // destinations the class used (allowed)
	firstSeen             int64 // unix nanoseconds
}

const classBloomWords = 256 // 16 Kibit

// Engine runs the detectors over the events of the subjects this member
// owns, keeps their baselines and turns findings into risk. It is safe
// for concurrent use; each call holds one lock briefly.
type Engine struct {
	cfg   Config
	winNs int64
	epoch int64 // unix seconds
	mu    sync.Mutex
	devs  map[topology.Subject]*devState
	class map[string]*classState
	risks map[topology.Subject]*riskState
	dirty map[topology.Subject]struct{} // subjects whose risk rose since the last Pending
	seq   uint64
	stats Stats
}

// Stats counts what the engine did.
type Stats struct {
	Events     [maxEventKind]uint64 `json:"-"`
	EventsAll  uint64               `json:"events"`
	Findings   uint64               `json:"findings"`
	Suppressed uint64               `json:"suppressed"`
	Subjects   int                  `json:"subjects"`
	Classes    int                  `json:"classes"`
	AtRisk     int                  `json:"atRisk"`
}

// New returns an empty engine.
func New(cfg Config) *Engine {
	cfg.defaults()
	return &Engine{cfg: cfg, winNs: int64(cfg.Window), epoch: suppressEpoch,
		devs: make(map[topology.Subject]*devState), class: make(map[string]*classState),
		risks: make(map[topology.Subject]*riskState), dirty: make(map[topology.Subject]struct{})}
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.stats
	s.Subjects, s.Classes, s.AtRisk = len(e.devs), len(e.class), len(e.risks)
	return s
}

func (e *Engine) classOf(name string, at int64) *classState {
	c := e.class[name]
	if c == nil {
		c = &classState{seen: make(bloom, classBloomWords), firstSeen: at}
		e.class[name] = c
	}
	return c
}

// Observe runs the detectors on one event and returns the findings it
// produced (already counted into the subject's risk unless the class is
// learning). Events of one subject should arrive roughly in time order;
// an event older than the subject's window counts into the current one.
func (e *Engine) Observe(ev *Event) []topology.Finding {
	if ev.SubKind != topology.KindDevice && ev.SubKind != topology.KindGateway || ev.Subject == "" {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stats.EventsAll++
	if ev.Kind < maxEventKind {
		e.stats.Events[ev.Kind]++
	}
	sub := ev.Subj()
	d := e.devs[sub]
	if d == nil {
		d = &devState{class: ev.Class}
		e.devs[sub] = d
	} else if ev.Class != "" && d.class != ev.Class {
		d.class = ev.Class // reclassified: its own baseline goes on
	}
	cname := d.class
	if cname == "" {
		cname = "gateway"
		if sub.Kind == topology.KindDevice {
			cname = "-"
		}
	}
	c := e.classOf(cname, ev.At)
	e.roll(d, c, ev.At)
	o := observation{e: e, ev: ev, sub: sub, d: d, c: c, class: cname}
	switch ev.Kind {
	case EventDecision:
		o.decision()
	case EventAccess:
		o.access()
	case EventAttestation:
		o.fire(DetAttestation, topology.SeverityHigh, fmt.Sprintf("attestation failed (%s): %s", ev.Name, ev.Detail),
			map[string]string{"format": ev.Name, "reason": ev.Detail})
	case EventReplay:
		o.fire(DetReplay, topology.SeverityCritical, "attestation evidence replayed: its nonce was already used",
			map[string]string{"format": ev.Name, "detail": ev.Detail})
	case EventSignal:
		o.signal()
	case EventUnknownIdentity:
		// Distinct identities count, not requests: one stray certificate
		// retrying (a device just removed from the topology) is one.
		bit := uint64(1) << (hashString(ev.Name) % 64)
		if d.unknownIDs&bit != 0 {
			break
		}
		d.unknownIDs |= bit
		n := bits.OnesCount64(d.unknownIDs)
		sev := topology.SeverityMedium
		if n >= unknownBurst {
			sev = topology.SeverityHigh
		}
		o.fire(DetUnknownID, sev, fmt.Sprintf("%d identit%s this topology does not allow at gateway %s this window, latest %s",
			n, plural(n, "y", "ies"), sub.Name, ev.Name),
			map[string]string{"identity": ev.Name, "count": strconv.Itoa(n), "reason": ev.Detail})
	}
	return o.found
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// roll closes the subject's window if the event opens a later one: the
// closed window (unless anomalous) and the idle ones after it are learned,
// and detectors whose count fell below their lower threshold re-arm.
func (e *Engine) roll(d *devState, c *classState, at int64) {
	w := at / e.winNs
	if w <= d.win {
		return
	}
	if d.win != 0 {
		gap := int(min(w-d.win-1, 64))
		useDevice := d.windows >= uint32(e.cfg.Warmup)
		rateLow, volLow := e.lower(d, c, useDevice)
		// Neither a window that raised a finding nor one while a detector
		// is still firing is learned: a sustained attack must not become
		// the baseline.
		if !d.anomaly && d.firing == 0 {
			d.rate.add(float64(d.reqs), alphaDevice)
			d.volume.add(float64(d.bytes), alphaDevice)
			d.rate.addZeros(gap, alphaDevice)
			d.volume.addZeros(gap, alphaDevice)
			c.rate.add(float64(d.reqs), alphaClass)
			c.volume.add(float64(d.bytes), alphaClass)
			c.rate.addZeros(min(gap, 8), alphaClass)
			c.volume.addZeros(min(gap, 8), alphaClass)
			c.rateN += uint64(1 + min(gap, 8))
			c.volumeN += uint64(1 + min(gap, 8))
			d.windows += uint32(1 + gap)
		}
		if gap > 0 {
			d.firing = 0 // idle windows since: below every lower threshold
		}
		if float64(d.reqs) < rateLow {
			d.firing &^= 1 << detectorIndex(DetRateSpike)
		}
		if float64(d.bytes) < volLow {
			d.firing &^= 1 << detectorIndex(DetVolume)
		}
		if d.denies < 3 {
			d.firing &^= 1 << detectorIndex(DetDeniedBurst)
		}
		if d.limited < 2 {
			d.firing &^= 1 << detectorIndex(DetRateLimited)
		}
	}
	d.win = w
	d.reqs, d.denies, d.limited, d.unknownIDs, d.bytes, d.targets, d.anomaly = 0, 0, 0, 0, 0, 0, false
}

// baseline picks the device's own baseline once it has enough windows,
// else its class's once that has enough samples; ok is false when neither
// can judge yet.
func (e *Engine) baseline(d *devState, c *classState, dev, cls *ewma, clsN uint64) (*ewma, bool) {
	if d.windows >= uint32(e.cfg.Warmup) {
		return dev, true
	}
	if clsN >= uint64(e.cfg.ClassWarmup) {
		return cls, true
	}
	return nil, false
}

func (e *Engine) lower(d *devState, c *classState, useDevice bool) (rate, vol float64) {
	r, v := &c.rate, &c.volume
	if useDevice {
		r, v = &d.rate, &d.volume
	}
	return r.above(kLow, rateFloor/2), v.above(kLow, volumeFloor/2)
}

// observation is one event being judged.
type observation struct {
	e     *Engine
	ev    *Event
	sub   topology.Subject
	d     *devState
	c     *classState
	class string
	found []topology.Finding
}

func (o *observation) decision() {
	ev, d, c := o.ev, o.d, o.c
	d.reqs++
	if b, ok := o.e.baseline(d, c, &d.rate, &c.rate, c.rateN); ok && d.firing&(1<<detectorIndex(DetRateSpike)) == 0 {
		if thr := b.above(kHigh, rateFloor); float64(d.reqs) > thr {
			d.firing |= 1 << detectorIndex(DetRateSpike)
			sev := topology.SeverityMedium
			o.fire(DetRateSpike, sev, fmt.Sprintf("%d requests in %s, baseline %.1f (threshold %.0f)", d.reqs, o.e.cfg.Window, b.Mean, thr),
				map[string]string{"requests": strconv.Itoa(int(d.reqs)), "baseline": ftoa(float64(b.Mean)), "threshold": ftoa(thr)})
		}
	}
	if ev.Bytes > 0 {
		o.checkSize(ev.Bytes)
	}
	h := hashString(destination(ev))
	if ev.Allowed {
		bl := bloom(d.seen[:])
		if !c.seen.has(h) {
			c.seen.add(h)
			if d.windows >= uint32(o.e.cfg.Warmup) && !bl.has(h) && ev.At-c.firstSeen > int64(time.Hour) {
				o.fire(DetNewDestination, topology.SeverityLow, fmt.Sprintf("first request to %s %s %s by the device and its class (allowed by flow)", ev.Service, ev.Method, ev.Path),
					map[string]string{"service": ev.Service, "method": ev.Method, "path": ev.Path, "allowed": "true"})
			}
		}
		bl.add(h)
		if ev.Bytes > 0 && !d.anomaly {
			d.size.add(float64(ev.Bytes), alphaSizeDevice)
			c.size.add(float64(ev.Bytes), alphaSizeClass)
			c.sizeN++
		}
		return
	}
	d.denies++
	switch ev.Cause {
	case CauseRateLimited:
		d.limited++
		// A few hits are a chatty device; a window full of them is a
		// flood, whatever the baselines say (it needs none).
		switch {
		case d.limited == floodHits:
			o.fire(DetRateLimited, topology.SeverityMedium, fmt.Sprintf("%d requests over the rate limit in %s: a flood", d.limited, o.e.cfg.Window),
				map[string]string{"hits": strconv.Itoa(int(d.limited))})
		case d.limited >= limitedHits && d.firing&(1<<detectorIndex(DetRateLimited)) == 0:
			d.firing |= 1 << detectorIndex(DetRateLimited)
			o.fire(DetRateLimited, topology.SeverityLow, fmt.Sprintf("%d requests over the rate limit in %s", d.limited, o.e.cfg.Window),
				map[string]string{"hits": strconv.Itoa(int(d.limited))})
		}
		o.burst() // a flood is a burst of denies too
		return
	case CauseNoFlow, CauseUnknownService:
	default:
		return // about the subject (quarantined, restricted, attestation), not where it went
	}
	d.targets |= 1 << (h % 64)
	bl := bloom(d.seen[:])
	if !bl.has(h) && !c.seen.has(h) {
		bl.add(h)
		sev, what := topology.SeverityMedium, ""
		if ev.Bytes >= payloadBytes {
			sev, what = topology.SeverityHigh, fmt.Sprintf(" carrying %d bytes", ev.Bytes)
		}
		o.fire(DetNewDestination, sev, fmt.Sprintf("denied request%s to %s %s %s, never used by the device or its class", what, orDash(ev.Service), ev.Method, ev.Path),
			map[string]string{"service": ev.Service, "method": ev.Method, "path": ev.Path, "cause": ev.Cause, "bytes": strconv.FormatInt(ev.Bytes, 10)})
	} else if ev.Bytes >= payloadBytes && !c.seen.has(h) && d.quietSv[detectorIndex(DetNewDestination)] < severityRank(topology.SeverityHigh) {
		o.fire(DetNewDestination, topology.SeverityHigh, fmt.Sprintf("denied request carrying %d bytes to %s %s %s, a destination the class never used", ev.Bytes, orDash(ev.Service), ev.Method, ev.Path),
			map[string]string{"service": ev.Service, "method": ev.Method, "path": ev.Path, "cause": ev.Cause, "bytes": strconv.FormatInt(ev.Bytes, 10)})
	}
	if ev.CrossZone {
		o.fire(DetCrossZone, topology.SeverityMedium, fmt.Sprintf("denied attempt at %s in another zone", orDash(ev.Service)),
			map[string]string{"service": ev.Service, "path": ev.Path})
	}
	o.burst()
}

// burst judges the window's denied requests: many at several destinations
// is a scan or lateral movement; many at all is a flood of refusals.
func (o *observation) burst() {
	d := o.d
	if d.firing&(1<<detectorIndex(DetDeniedBurst)) == 0 {
		targets := bits.OnesCount64(d.targets)
		switch {
		case d.denies >= burstDenies && targets >= burstTargets:
			d.firing |= 1 << detectorIndex(DetDeniedBurst)
			o.fire(DetDeniedBurst, topology.SeverityHigh, fmt.Sprintf("%d denied requests at %d destinations in %s: a scan or lateral movement", d.denies, targets, o.e.cfg.Window),
				map[string]string{"denied": strconv.Itoa(int(d.denies)), "destinations": strconv.Itoa(targets)})
		case d.denies >= repeatedDenies:
			d.firing |= 1 << detectorIndex(DetDeniedBurst)
			o.fire(DetDeniedBurst, topology.SeverityMedium, fmt.Sprintf("%d denied requests in %s", d.denies, o.e.cfg.Window),
				map[string]string{"denied": strconv.Itoa(int(d.denies)), "destinations": strconv.Itoa(targets)})
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

func (o *observation) checkSize(n int64) {
	d, c := o.d, o.c
	b, ok := o.e.baseline(d, c, &d.size, &c.size, c.sizeN)
	if !ok {
		return
	}
	if d.windows < uint32(o.e.cfg.Warmup) && c.sizeN < uint64(o.e.cfg.ClassWarmup) {
		return
	}
	thr := b.above(sizeK, sizeFloor)
	if float64(n) <= thr {
		return
	}
	sev := topology.SeverityMedium
	if float64(n) > sizeHighFactor*thr {
		sev = topology.SeverityHigh
	}
	o.fire(DetSize, sev, fmt.Sprintf("request of %d bytes, baseline %.0f (threshold %.0f)", n, b.Mean, thr),
		map[string]string{"bytes": strconv.FormatInt(n, 10), "baseline": ftoa(float64(b.Mean)), "threshold": ftoa(thr)})
}

func (o *observation) access() {
	ev, d, c := o.ev, o.d, o.c
	d.bytes += uint64(ev.Bytes + ev.RespBytes)
	if ev.Bytes > 0 {
		o.checkSize(ev.Bytes)
	}
	if b, ok := o.e.baseline(d, c, &d.volume, &c.volume, c.volumeN); ok && d.firing&(1<<detectorIndex(DetVolume)) == 0 {
		// Bytes come in requests: a window of a few more requests than
		// usual is not an outlier, so the floor grows with the mean.
		if thr := b.above(kHigh, max(volumeFloor, 4*float64(b.Mean))); float64(d.bytes) > thr {
			d.firing |= 1 << detectorIndex(DetVolume)
			o.fire(DetVolume, topology.SeverityMedium, fmt.Sprintf("%d bytes in %s, baseline %.0f (threshold %.0f)", d.bytes, o.e.cfg.Window, b.Mean, thr),
				map[string]string{"bytes": strconv.FormatUint(d.bytes, 10), "baseline": ftoa(float64(b.Mean)), "threshold": ftoa(thr)})
		}
	}
}

func (o *observation) signal() {
	ev := o.ev
	switch ev.Name {
	case "tamper":
		o.fire(DetTamper, topology.SeverityCritical, "tamper signal from gateway: "+orDash(ev.Detail),
			map[string]string{"signal": ev.Name, "detail": ev.Detail, "gateway": ev.Gateway})
	default:
		o.fire(DetSignal, topology.SeverityLow, fmt.Sprintf("%s signal from gateway: %s", ev.Name, orDash(ev.Detail)),
			map[string]string{"signal": ev.Name, "detail": ev.Detail, "gateway": ev.Gateway})
	}
}

func severityRank(s string) uint8 {
	switch s {
	case topology.SeverityLow:
		return 1
	case topology.SeverityMedium:
		return 2
	case topology.SeverityHigh:
		return 3
	case topology.SeverityCritical:
		return 4
	}
	return 0
}

// fire records a finding unless the detector is suppressed for the subject
// at this severity or below.
func (o *observation) fire(det, sev, summary string, evidence map[string]string) {
	e, d := o.e, o.d
	i := detectorIndex(det)
	now := o.ev.At
	sec := uint32(max(now/1e9-e.epoch, 0))
	rank := severityRank(sev)
	if sec < d.quiet[i] && rank <= d.quietSv[i] {
		e.stats.Suppressed++
		return
	}
	d.quiet[i], d.quietSv[i] = sec+uint32(e.cfg.Suppress/time.Second), rank
	d.anomaly = true
	e.seq++
	learning := now-o.c.firstSeen < int64(e.cfg.Learning(o.class))
	for k, v := range evidence {
		if v == "" {
			delete(evidence, k)
		}
	}
	f := topology.Finding{
		ID: fmt.Sprintf("f-%s-%x-%d", e.cfg.Member, now/1e6, e.seq), Subject: o.sub, Detector: det, Severity: sev,
		Score: SeverityScore(sev), At: time.Unix(0, now).UTC(), Summary: clip(summary, maxDetail), Evidence: evidence, Learning: learning,
	}
	e.stats.Findings++
	if !learning {
		e.addRisk(o.sub, o.class, &f)
	}
	o.found = append(o.found, f)
}

// suppressEpoch is where suppression times count from (2025-01-01): 32
// bits of seconds from it last past 2150.
const suppressEpoch = 1735689600

// halfLives is how many half-lives a finding counts for (then < 1%).
const halfLives = 7

func (e *Engine) decay(score int, at, now int64) float64 {
	age := float64(now-at) / float64(e.cfg.HalfLife)
	if age < 0 {
		age = 0
	}
	return float64(score) * math.Exp2(-age)
}
