package fleetsim

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

func loadTopology(t *testing.T, path string) *topology.Index {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := topology.Load(data)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

func small(t *testing.T) *topology.Index { return loadTopology(t, "testdata/small.yaml") }

const smartCityPath = "../../examples/smart-city/topology.yaml"

func device(t *testing.T, ix *topology.Index, name string, rate float64) *Device {
	t.Helper()
	d, ok := ix.Device(name)
	if !ok {
		t.Fatalf("no device %s", name)
	}
	return NewDevice(ix, d, rate)
}

// targetsOf gives a device's targets as "flow service host method" with
// their intervals.
func targetsOf(d *Device) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, t := range d.Targets {
		out[strings.Join([]string{t.Flow, t.Service, t.Host, t.Method}, " ")] = t.Interval
	}
	return out
}

func near(got, want time.Duration) bool {
	d := got - want
	return d > -50*time.Millisecond && d < 50*time.Millisecond
}

func TestDeviceTargetsFollowTheFlowsThatSelectIt(t *testing.T) {
	ix := small(t)
	cases := []struct {
		device string
		want   map[string]time.Duration
	}{
		// Zones and class select it; the tcp flow it has by name is left
		// out (a gateway's HTTP listener cannot carry it).
		{"s-a-1", map[string]time.Duration{"sensor-telemetry telemetry telemetry.t.example POST": 10 * time.Second}},
		{"s-a-2", map[string]time.Duration{"sensor-telemetry telemetry telemetry.t.example POST": 10 * time.Second}},
		// Its gateway selects it for firmware, its name for a local
		// service: the 6/h flow gets 4/h, the others share the rest.
		{"s-b-1", map[string]time.Duration{
			"sensor-telemetry telemetry telemetry.t.example POST": 20225 * time.Millisecond,
			"b-firmware firmware fw.t.example GET":                900 * time.Second,
			"s-b-1-local local local.b.t.example POST":            20225 * time.Millisecond,
		}},
		// Methods are spread over the devices.
		{"c-a-1", map[string]time.Duration{"cam-upload video video.t.example PUT": 10 * time.Second}},
		{"c-b-1", map[string]time.Duration{
			"cam-upload video video.t.example POST": 10112 * time.Millisecond,
			"b-firmware firmware fw.t.example GET":  900 * time.Second,
		}},
		// The meter class's 3/m (2/m with the margin) slows it below the
		// base rate.
		{"m-a-1", map[string]time.Duration{"meter-readings telemetry telemetry.t.example POST": 30 * time.Second}},
		// Only commanded by a service: it sends nothing.
		{"l-a-1", map[string]time.Duration{}},
	}
	for _, c := range cases {
		got := targetsOf(device(t, ix, c.device, 1))
		if len(got) != len(c.want) {
			t.Errorf("%s: targets %v, want %v", c.device, got, c.want)
			continue
		}
		for k, iv := range c.want {
			if g, ok := got[k]; !ok || !near(g, iv) {
				t.Errorf("%s: target %q = %v (present %v), want %v; all: %v", c.device, k, g, ok, iv, got)
			}
		}
	}
}

func TestRatesStayBelowEveryLimit(t *testing.T) {
	for _, path := range []string{"testdata/small.yaml", smartCityPath} {
		ix := loadTopology(t, path)
		for _, rate := range []float64{1, 10, 1000} {
			for _, td := range ix.Devices() {
				d := NewDevice(ix, td, rate)
				class, _ := ix.Class(d.Class)
				total := 0.0
				for _, tg := range d.Targets {
					per := 1 / tg.Interval.Seconds()
					total += per
					f, _ := ix.Flow(tg.Flow)
					if !f.Rate.IsZero() && per > f.Rate.PerSecond()/rateMargin*1.001 {
						t.Errorf("%s rate %v: %s at %.4f/s, over flow limit %s with the margin", path, rate, tg.Flow, per, f.Rate)
					}
				}
				if !class.Rate.IsZero() && total > class.Rate.PerSecond()/rateMargin*1.001 {
					t.Errorf("%s rate %v: %s at %.4f/s, over class limit %s with the margin", path, rate, d.Name, total, class.Rate)
				}
				if base := rate / BaseInterval.Seconds(); total > base*1.001 {
					t.Errorf("%s rate %v: %s at %.4f/s, above its share %.4f/s", path, rate, d.Name, total, base)
				}
			}
		}
	}
}

func TestPathsAreConcreteAndAllowed(t *testing.T) {
	ix := loadTopology(t, smartCityPath)
	for _, td := range ix.Devices() {
		d := NewDevice(ix, td, 1)
		for _, tg := range d.Targets {
			f, _ := ix.Flow(tg.Flow)
			for n := range uint64(3) {
				p := tg.Path(n, d)
				if why := topology.PathProblem(p); why != "" {
					t.Errorf("%s %s: path %q is not normalised: %s", d.Name, tg.Flow, p, why)
				}
				if !f.AllowsRequest(tg.Method, p) {
					t.Errorf("%s: flow %s does not allow its own request %s %s", d.Name, tg.Flow, tg.Method, p)
				}
			}
		}
	}
	cam := device(t, ix, "cam-n1-001", 1)
	if p := cam.Targets[0].Path(7, cam); p != "/upload/traffic-camera/cam-n1-001-7" {
		t.Errorf("camera upload path = %q", p)
	}
}

func TestIdentities(t *testing.T) {
	d := device(t, small(t), "s-b-1", 1)
	if d.SPIFFEID != "spiffe://t.example/zone/b/device/s-b-1" || d.GatewayID != "spiffe://t.example/zone/b/gateway/gw-b" ||
		d.Zone != "b" || d.Gateway != "gw-b" || d.Class != "sensor" {
		t.Errorf("device = %+v", d)
	}
}

func TestPlanSpreadsOverClasses(t *testing.T) {
	ix := small(t)
	names := func(ds []*Device) []string {
		var out []string
		for _, d := range ds {
			out = append(out, d.Name)
		}
		return out
	}
	all, idle := Plan(ix, 0, 1)
	if got := names(all); !slices.Equal(got, []string{"c-a-1", "c-b-1", "m-a-1", "s-a-1", "s-a-2", "s-b-1"}) || idle != 1 {
		t.Errorf("Plan(0) = %v, idle %d", got, idle)
	}
	two, _ := Plan(ix, 2, 1)
	if got := names(two); !slices.Equal(got, []string{"c-a-1", "m-a-1"}) {
		t.Errorf("Plan(2) = %v, want the first of the first two classes", got)
	}
	four, _ := Plan(ix, 4, 1)
	if got := names(four); !slices.Equal(got, []string{"c-a-1", "c-b-1", "m-a-1", "s-a-1"}) {
		t.Errorf("Plan(4) = %v, want one of each class, then the next", got)
	}
	many, _ := Plan(ix, 99, 1)
	if len(many) != 6 {
		t.Errorf("Plan(99) has %d devices, want the 6 that send", len(many))
	}
	city, idle := Plan(loadTopology(t, smartCityPath), 0, 1)
	if len(city) != 60 || idle != 0 {
		t.Errorf("smart city: %d devices send, %d idle; want 60, 0", len(city), idle)
	}
}

func TestScenarioNames(t *testing.T) {
	got, err := ScenarioNames([]string{"scan,tamper", "all", "Scan"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"scan", "tamper", "exfiltration", "zone-probe", "replay", "flood"}
	if !slices.Equal(got, want) {
		t.Errorf("ScenarioNames = %v, want %v", got, want)
	}
	if _, err := ScenarioNames([]string{"ddos"}); err == nil {
		t.Error("an unknown scenario was accepted")
	}
}
