package spire

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

const (
	agentA = "spiffe://city.example/spire/agent/join_token/aaaa"
	agentB = "spiffe://city.example/spire/agent/join_token/bbbb"
)

func gatewayBinding(gw, spiffeID, agent string, selectors ...string) Entry {
	if len(selectors) == 0 {
		selectors = []string{"spiffe_id:" + agent}
	}
	return Entry{ID: "vigil.agent.gateway." + gw + ".n1", SPIFFEID: spiffeID, ParentID: agent, Selectors: selectors,
		X509TTL: 900, Hint: "vigil.agent", CreatedAt: now.Add(-time.Hour).Unix()}
}

var now = time.Unix(1_800_000_000, 0)

func TestPlanBindings(t *testing.T) {
	bound := gatewayBinding("gw-n", gwN, agentA)
	camera := Entry{ID: "vigil.agent.device.c-1.n2", SPIFFEID: "spiffe://city.example/zone/north/device/c-1", ParentID: agentB,
		Selectors: []string{"spiffe_id:" + agentB}, X509TTL: 300, Hint: "vigil.agent"}
	attested := map[string]*Agent{agentA: {ID: agentA}, agentB: {ID: agentB}}
	banned := map[string]*Agent{agentA: {ID: agentA, Banned: true}}
	stale := bound
	stale.CreatedAt = now.Add(-MaxTokenTTL - time.Minute).Unix()
	tests := []struct {
		name        string
		mutate      func(*topology.Document)
		quarantined []topology.Subject
		opts        func(*Options)
		bindings    []Entry
		agents      map[string]*Agent
		want        agentActions
	}{
		{name: "bound and attested: nothing to do", bindings: []Entry{bound, camera}, agents: attested},
		{name: "pending token: nothing to do", bindings: []Entry{bound}},
		{name: "pending longer than a token lives: deleted", bindings: []Entry{stale},
			want: agentActions{Delete: []string{bound.ID}}},
		{name: "quarantined gateway: its agent is banned, the binding stays",
			quarantined: []topology.Subject{topology.GatewaySubject("gw-n")}, bindings: []Entry{bound}, agents: attested,
			want: agentActions{Ban: []string{agentA}}},
		{name: "quarantined gateway, already banned: nothing more",
			quarantined: []topology.Subject{topology.GatewaySubject("gw-n")}, bindings: []Entry{bound}, agents: banned},
		{name: "quarantined gateway, token not used yet: the binding goes",
			quarantined: []topology.Subject{topology.GatewaySubject("gw-n")}, bindings: []Entry{bound},
			want: agentActions{Delete: []string{bound.ID}}},
		{name: "quarantined agent device: banned like a gateway",
			quarantined: []topology.Subject{topology.DeviceSubject("c-1")}, bindings: []Entry{camera}, agents: attested,
			want: agentActions{Ban: []string{agentB}}},
		{name: "released with a banned agent: evicted, binding deleted (onboard again)",
			bindings: []Entry{bound}, agents: banned, want: agentActions{Evict: []string{agentA}, Delete: []string{bound.ID}}},
		{name: "gateway removed from the topology: binding deleted, agent evicted",
			mutate:   func(d *topology.Document) { d.Gateways = d.Gateways[1:]; d.Devices = d.Devices[1:2] },
			bindings: []Entry{bound}, agents: attested, want: agentActions{Delete: []string{bound.ID}, Evict: []string{agentA}}},
		{name: "device class no longer runs agents: binding deleted",
			mutate:   func(d *topology.Document) { d.DeviceClasses[1].Identity = "" },
			bindings: []Entry{camera}, want: agentActions{Delete: []string{camera.ID}}},
		{name: "gateway moved zone: SPIFFE ID updated",
			mutate:   func(d *topology.Document) { d.Gateways[0].Zone = "south" },
			bindings: []Entry{bound}, agents: attested,
			want: agentActions{Update: []Entry{func() Entry {
				e := gatewayBinding("gw-n", "spiffe://city.example/zone/south/gateway/gw-n", agentA)
				e.CreatedAt = 0
				return e
			}()}}},
		{name: "gateway selectors configured: the gateway's processes get its SVID",
			opts:     func(o *Options) { o.GatewaySelectors = []string{"unix:uid:101"} },
			bindings: []Entry{bound}, agents: attested,
			want: agentActions{Update: []Entry{func() Entry {
				e := gatewayBinding("gw-n", gwN, agentA, "unix:uid:101")
				e.CreatedAt = 0
				return e
			}()}}},
		{name: "a gateway's label overrides the configured selectors",
			mutate:   func(d *topology.Document) { d.Gateways[0].Labels = topology.Labels{SelectorsLabel: "unix:uid:7"} },
			opts:     func(o *Options) { o.GatewaySelectors = []string{"unix:uid:101"} },
			bindings: []Entry{gatewayBinding("gw-n", gwN, agentA, "unix:uid:7")}, agents: attested},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, opts := fixture(t, tt.mutate, tt.opts, tt.quarantined...)
			got := planBindings(snap, &opts, tt.bindings, tt.agents, now)
			for i := range got.Update {
				got.Update[i].CreatedAt = 0
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("planBindings:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestBindable(t *testing.T) {
	ix := snapshotOf(t, testDoc()).Index()
	for _, tt := range []struct {
		s    topology.Subject
		want error
	}{
		{topology.GatewaySubject("gw-n"), nil},
		{topology.DeviceSubject("c-1"), nil},
		{topology.DeviceSubject("l-1"), ErrNoAgent},
		{topology.ServiceSubject("telemetry"), ErrNoAgent},
		{topology.GatewaySubject("gw-x"), ErrNoSubject},
		{topology.DeviceSubject("c-9"), ErrNoSubject},
	} {
		if err := bindable(ix, tt.s); !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
			t.Errorf("bindable(%s) = %v, want %v", tt.s, err, tt.want)
		}
	}
}

func TestBindingIDsReadBack(t *testing.T) {
	o := DefaultOptions()
	for _, s := range []topology.Subject{topology.GatewaySubject("gw-n"), topology.DeviceSubject("c-1")} {
		id := o.bindingID(s, "0a1b2c3d")
		if got, ok := o.bindingSubject(id); !ok || got != s {
			t.Errorf("bindingSubject(%q) = %v, %v; want %v", id, got, ok, s)
		}
		if _, ok := o.subjectOf(id); ok {
			t.Errorf("subjectOf(%q) reads a binding as a subject's entry", id)
		}
	}
	for _, id := range []string{"vigil.agent.service.x.n", "vigil.agent.gateway.gw-n", "vigil.agent.gateway.gw-n.", "vigil.device.l-1"} {
		if s, ok := o.bindingSubject(id); ok {
			t.Errorf("bindingSubject(%q) = %v, want none", id, s)
		}
	}
}

func TestRedactToken(t *testing.T) {
	for in, want := range map[string]string{
		agentA: "spiffe://city.example/spire/agent/join_token/aaaa…",
		"spiffe://city.example/spire/agent/join_token/5e1c20c7-798f-4aed-9d80-2b129bb52429": "spiffe://city.example/spire/agent/join_token/5e1c20c7…",
		"spiffe://city.example/spire/agent/x509pop/abc":                                     "spiffe://city.example/spire/agent/x509pop/abc",
	} {
		if got := redactToken(in); got != want {
			t.Errorf("redactToken(%q) = %q, want %q", in, got, want)
		}
	}
}
