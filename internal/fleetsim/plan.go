package fleetsim

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// BaseInterval is how often a device sends at Rate 1: one request every
// ten seconds (one per monitor window), spread over its flows.
const BaseInterval = 10 * time.Second

// rateMargin keeps the fleet below every rate limit: a flow or class
// limited to N per period gets at most N/rateMargin per period.
const rateMargin = 1.5

// Device is one simulated sender: a device of the topology and the
// requests its flows allow it.
type Device struct {
	Name, Class, Gateway, Zone string
	// SPIFFEID is the device's identity: the URI SAN of the certificate it
	// presents to its gateway, which the gateway's Envoy gives ext_authz as
	// attributes.source.principal and logs as the peer certificate's.
	SPIFFEID string
	// GatewayID is its gateway's SPIFFE ID (the gateway's own certificate).
	GatewayID string
	// Targets are its flows to services; empty for a device that sends
	// nothing (only commanded, or allowed nothing).
	Targets []Target

	index int           // position among the topology's devices (sorted)
	seq   atomic.Uint64 // requests sent, for paths
}

// Target is one flow of a device to one service: what the device sends
// there and how often.
type Target struct {
	Flow    string `json:"flow"`
	Service string `json:"service"`
	// Host is the request authority: the service's first host.
	Host string `json:"host"`
	// Method is the one the device uses: the flow's methods are spread
	// over the devices, a flow without methods is sent POST.
	Method string `json:"method"`
	// Paths the requests rotate through: the flow's, exact or prefix
	// (a prefix gets a concrete suffix per request); "/" as a prefix when
	// the flow names none.
	Paths []topology.PathMatch `json:"paths"`
	// Interval is the mean time between the device's requests on this
	// target: its share of BaseInterval/Rate, never faster than the flow's
	// or the class's rate limit allows with a margin (rateMargin).
	Interval  time.Duration `json:"interval"`
	Essential bool          `json:"essential,omitempty"`
}

// Path is the n-th concrete request path of the target for device d: an
// exact path as it is; a prefix followed by the device's class, its name
// and n, so that the monitor's destinations (service, method and the
// first two path segments) stay few per class.
func (t *Target) Path(n uint64, d *Device) string {
	if len(t.Paths) == 0 {
		return "/"
	}
	return concretePath(t.Paths[n%uint64(len(t.Paths))], d.Class, d.Name+"-"+strconv.FormatUint(n, 10))
}

// concretePath is a request path that pm matches: pm itself when exact,
// else the prefix followed by the segments given.
func concretePath(pm topology.PathMatch, segs ...string) string {
	if !pm.Prefix {
		return pm.Value
	}
	p := pm.Value
	if p == "" {
		p = "/"
	}
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p + strings.Join(segs, "/")
}

// HasBody reports whether the target's requests carry a body.
func (t *Target) HasBody() bool { return hasBody(t.Method) }

func hasBody(method string) bool {
	switch method {
	case "GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT":
		return false
	}
	return true
}

// targetServices are the services a flow leads to that a gateway's
// device-facing HTTP listener serves: named by the flow's to side, in
// the zones it narrows to, not tcp (as xds plans them).
func targetServices(ix *topology.Index, r *topology.Rule) []*topology.Service {
	names := r.To.Services
	if r.To.Service != "" {
		names = append([]string{r.To.Service}, names...)
	}
	var out []*topology.Service
	for _, n := range names {
		svc, ok := ix.Service(n)
		if !ok || svc.Protocol == topology.ProtocolTCP || len(svc.Hosts) == 0 {
			continue
		}
		if slices.Contains(ix.RulesTo(topology.ServiceSubject(n)), r) && !slices.Contains(out, svc) {
			out = append(out, svc)
		}
	}
	return out
}

// NewDevice returns the simulated form of the topology's device d: its
// identities and, at the given rate multiplier, its targets.
func NewDevice(ix *topology.Index, d *topology.Device, rate float64) *Device {
	gw, _ := ix.Gateway(d.Gateway)
	td := ix.TrustDomain()
	sd := &Device{Name: d.Name, Class: d.Class, Gateway: d.Gateway, Zone: gw.Zone,
		SPIFFEID:  topology.SPIFFEID(td, gw.Zone, topology.DeviceSubject(d.Name)),
		GatewayID: topology.SPIFFEID(td, gw.Zone, topology.GatewaySubject(gw.Name))}
	if i, ok := slices.BinarySearchFunc(ix.Devices(), d.Name, func(x *topology.Device, n string) int {
		return strings.Compare(x.Name, n)
	}); ok {
		sd.index = i
	}
	type flowTargets struct {
		rule    *topology.Rule
		targets []Target
	}
	var flows []flowTargets
	for _, r := range ix.RulesFrom(topology.DeviceSubject(d.Name)) {
		ft := flowTargets{rule: r}
		for _, svc := range targetServices(ix, r) {
			t := Target{Flow: r.Name, Service: svc.Name, Host: svc.Hosts[0], Method: "POST",
				Paths: slices.Clone(r.Paths), Essential: r.Essential}
			if len(r.Methods) > 0 {
				t.Method = r.Methods[sd.index%len(r.Methods)]
			}
			if len(t.Paths) == 0 {
				t.Paths = []topology.PathMatch{{Value: "/", Prefix: true}}
			}
			ft.targets = append(ft.targets, t)
		}
		if len(ft.targets) > 0 {
			flows = append(flows, ft)
		}
	}
	if len(flows) == 0 {
		return sd
	}
	// Share the device's rate among its flows, water-filling: a flow
	// whose limit allows less than an equal share gets what it allows
	// (with the margin), the others share the rest.
	total := rate / BaseInterval.Seconds()
	caps := make([]float64, len(flows))
	alloc := make([]float64, len(flows))
	open := make([]int, 0, len(flows))
	for i, f := range flows {
		caps[i] = math.Inf(1)
		if !f.rule.Rate.IsZero() {
			caps[i] = f.rule.Rate.PerSecond() / rateMargin
		}
		open = append(open, i)
	}
	remaining := total
	for len(open) > 0 {
		share := remaining / float64(len(open))
		capped := false
		for k := 0; k < len(open); k++ {
			if i := open[k]; caps[i] < share {
				alloc[i] = caps[i]
				remaining -= caps[i]
				open = slices.Delete(open, k, k+1)
				capped = true
				k--
			}
		}
		if !capped {
			for _, i := range open {
				alloc[i] = share
			}
			break
		}
	}
	sum := 0.0
	for _, a := range alloc {
		sum += a
	}
	if c, ok := ix.Class(d.Class); ok && !c.Rate.IsZero() {
		if limit := c.Rate.PerSecond() / rateMargin; sum > limit {
			for i := range alloc {
				alloc[i] *= limit / sum
			}
		}
	}
	for i, f := range flows {
		per := alloc[i] / float64(len(f.targets))
		for _, t := range f.targets {
			t.Interval = time.Duration(float64(time.Second) / per).Round(time.Millisecond)
			sd.Targets = append(sd.Targets, t)
		}
	}
	return sd
}

// Plan derives the simulated fleet from a topology: the devices that send
// anything (a device with no flow to a service is left out: idle counts
// them), all of them when devices is 0, else the first devices of them
// taken in turn from each class (classes by name, devices by name), so
// that every class is represented.
func Plan(ix *topology.Index, devices int, rate float64) (fleet []*Device, idle int) {
	if rate <= 0 {
		rate = 1
	}
	byClass := map[string][]*Device{}
	var classes []string
	for _, d := range ix.Devices() {
		sd := NewDevice(ix, d, rate)
		if len(sd.Targets) == 0 {
			idle++
			continue
		}
		if _, ok := byClass[d.Class]; !ok {
			classes = append(classes, d.Class)
		}
		byClass[d.Class] = append(byClass[d.Class], sd)
	}
	slices.Sort(classes)
	total := 0
	for _, c := range classes {
		total += len(byClass[c])
	}
	if devices <= 0 || devices > total {
		devices = total
	}
	for round := 0; len(fleet) < devices; round++ {
		for _, c := range classes {
			if round < len(byClass[c]) && len(fleet) < devices {
				fleet = append(fleet, byClass[c][round])
			}
		}
	}
	slices.SortFunc(fleet, func(a, b *Device) int { return strings.Compare(a.Name, b.Name) })
	return fleet, idle
}

// sizes is how large a class's requests and responses are: stable per
// class, with a little noise.
type sizes struct {
	bodyMin, bodyMax int64 // request bodies (methods with a body)
	respMin, respMax int64 // response bodies of allowed requests
	getMin, getMax   int64 // response bodies of allowed GETs
}

// sizesOf guesses from the class's name: cameras upload video chunks,
// everything else reports small readings.
func sizesOf(class string) sizes {
	s := sizes{bodyMin: 150, bodyMax: 250, respMin: 40, respMax: 120, getMin: 600, getMax: 1400}
	if looksLike(class, "cam", "video", "cctv") {
		s.bodyMin, s.bodyMax = 56<<10, 64<<10
	}
	return s
}

// looksLike reports whether name contains any of the words.
func looksLike(name string, words ...string) bool {
	name = strings.ToLower(name)
	for _, w := range words {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}
