package e2e_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vigil-iot/vigil/e2e/envoymodel"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/topology"
)

// The resource types a gateway's Envoy takes over ADS.
const (
	gwLDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
	gwCDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	gwRDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	gwEDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

var gwTypes = []string{gwLDS, gwCDS, gwRDS, gwEDS}

// gwShort names a type URL in messages.
func gwShort(typeURL string) string {
	return map[string]string{gwLDS: "LDS", gwCDS: "CDS", gwRDS: "RDS", gwEDS: "EDS"}[typeURL]
}

// gwAuthzCluster is the static cluster of a gateway's ext_authz: by
// default each member points it at its own authorizer (--authz-addr).
const gwAuthzCluster = "vigil_authz"

// TestGatewayFailsOverToAnotherMember proves that a gateway whose member
// is cut off from the cluster reconnects to another member and converges
// to the same configuration as the rest of the cluster, quarantines made
// meanwhile included; and what a gateway that stays on the cut-off member
// gets: its last-known configuration, neither deny-all nor an error, until
// the partition heals and the member catches up.
//
// The gateway is an ADS client that behaves as Envoy does: LDS and CDS
// wildcard, then RDS and EDS for the names those carry, ACKing each
// response; its bootstrap (vigil envoy bootstrap) lists all three
// members' xDS addresses, and when it leaves a member it dials the next,
// sending the versions it last accepted, as Envoy does when its ADS
// stream is re-established. Envoy itself never leaves a member whose
// stream stays up, so a member that finds itself cut off closes its
// proxies' connections (node/xdsstreams.go); the gateway then dials the
// next member.
func TestGatewayFailsOverToAnotherMember(t *testing.T) {
	fn := harness.NewFaultNet()
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 3, Faults: fn, Args: []string{"--monitor=false"}})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("faults: %s; traffic: %s", fn, pairSummary(fn.Stats()))
		}
	})
	data, err := json.Marshal(partitionDoc())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client(0).ApplyTopology(ctxFor(t, 30*time.Second), data); err != nil {
		t.Fatal(err)
	}
	// slc-1 is quarantined before anything happens: every member's
	// configuration must keep denying it.
	q1, err := c.Client(0).Quarantine(ctxFor(t, 10*time.Second), topology.KindDevice, "slc-1", "quarantined before the partition")
	if err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader()
	if err != nil {
		t.Fatal(err)
	}
	a, b := (leader+1)%3, (leader+2)%3 // two followers: a is cut off, b takes the gateway
	ma, mb, ml := c.Member(a), c.Member(b), c.Member(leader)
	waitRevision(t, c, []int{0, 1, 2}, q1.Revision, 10*time.Second)
	t.Logf("leader %s; the gateway starts on follower %s and fails over to follower %s", ml.ID, ma.ID, mb.ID)

	const td = "city.example"
	slc := func(name string) string { return "spiffe://" + td + "/zone/north/device/" + name }
	env := []string{"VIGIL_TOKEN_FILE=" + c.TokenFile(), "VIGIL_SERVER=" + ml.APIAddr}
	bootYAML := mustCLI(t, env, "envoy", "bootstrap", "--node", "gw-north", "--xds-server", strings.Join([]string{ma.XDSAddr, mb.XDSAddr, ml.XDSAddr}, ","))
	boot, err := envoymodel.ParseBootstrap([]byte(bootYAML.stdout))
	if err != nil {
		t.Fatal(err)
	}
	members := bootstrapXDSMembers(t, boot.GetStaticResources().GetClusters())
	if want := []string{ma.XDSAddr, mb.XDSAddr, ml.XDSAddr}; !slices.Equal(members, want) {
		t.Fatalf("the bootstrap's xDS cluster lists %v, want every member %v", members, want)
	}
	node := &corev3.Node{Id: boot.GetNode().GetId(), Cluster: boot.GetNode().GetCluster()}
	if node.Id != "gw-north" || node.Cluster != "north" {
		t.Fatalf("bootstrap node %v", node)
	}
	authzOf := map[string]string{ma.XDSAddr: ma.AuthzAddr, mb.XDSAddr: mb.AuthzAddr, ml.XDSAddr: ml.AuthzAddr}

	// A modelled Envoy (package envoymodel) runs requests through the
	// configuration a gateway holds; devices present SVIDs of a test CA.
	sds := newSVIDs(t, spiffetest.NewCA(t, td), td)
	send := func(cfg *gwConfig, device string) *envoymodel.Outcome {
		t.Helper()
		p := &envoymodel.Proxy{Name: "gateway gw-north", Resources: cfg.model(t), Bootstrap: boot, Secrets: sds, AuthzTimeout: 5 * time.Second}
		defer p.Close()
		if err := p.CheckAccessLogs(); err != nil {
			t.Fatal(err)
		}
		out, err := p.Handle(ctxFor(t, 10*time.Second), envoymodel.Downstream{LocalPort: 8443,
			RemoteAddr: netip.MustParseAddrPort("10.20.0.2:40000"), PeerChain: sds.chain(slc(device))},
			envoymodel.Request{Method: "POST", Path: "/api/v1/telemetry", Authority: "telemetry.city.example:8443"})
		if err != nil {
			t.Fatalf("the model cannot run the gateway: %v", err)
		}
		return out
	}
	wantRBACDeny := func(cfg *gwConfig, from, device string) {
		t.Helper()
		if o := send(cfg, device); o.Forwarded || o.DecidedBy != "envoy.filters.http.rbac" || o.Status != 403 {
			t.Errorf("the configuration from %s: %s's request: %s; want refused by the gateway's RBAC", from, device, o.Trace())
		}
	}
	wantForwarded := func(cfg *gwConfig, from, device string) {
		t.Helper()
		if o := send(cfg, device); !o.Forwarded {
			t.Errorf("the configuration from %s: %s's request: %s; want forwarded", from, device, o.Trace())
		}
	}

	// The gateway connects to a, the first member its bootstrap lists.
	gw := dialGateway(t, members[0], node, nil)
	_, before := gw.waitFor(t, 30*time.Second, "the gateway's first complete configuration from "+ma.ID, func(cfg *gwConfig) bool {
		return cfg.complete() && cfg.denies(t)[slc("slc-1")]
	})
	before.check(t, ma.ID, authzOf[members[0]])
	t.Logf("gateway on %s: %s", ma.ID, before)

	// a is cut off from the other two.
	unnamed := fn.Stats()
	fn.Isolate(ma.ID, mb.ID, ml.ID)
	partitioned := time.Now()
	var stale map[string]any
	testwait.For(t, 10*time.Second, ma.ID+"'s /v1/node to report it has lost its quorum", func() bool {
		n, err := c.Client(a).Node(ctxFor(t, 2*time.Second))
		stale = nodeQuorum(n)
		return err == nil && stale["stale"] == true
	})
	t.Logf("%s reports itself cut off %v after the partition: %v", ma.ID, time.Since(partitioned).Round(time.Millisecond), stale)

	// The majority quarantines slc-2.
	q2, err := c.Client(leader).Quarantine(ctxFor(t, 10*time.Second), topology.KindDevice, "slc-2", "quarantined by the majority during the partition")
	if err != nil {
		t.Fatalf("the majority refused a quarantine during the partition: %v", err)
	}
	committed := time.Now()
	waitRevision(t, c, []int{b, leader}, q2.Revision, 10*time.Second)

	// Meanwhile a second Envoy of the gateway (a redundant one, or the
	// gateway before it notices) connects to a: it gets a's last-known
	// configuration, the same as before the partition; not deny-all, not
	// an error.
	observer := dialGateway(t, members[0], node, nil)
	_, onA := observer.waitFor(t, 10*time.Second, "a complete configuration from the cut-off "+ma.ID, (*gwConfig).complete)
	onA.check(t, ma.ID, authzOf[members[0]])
	if diff := onA.diff(before, nil); diff != "" {
		t.Errorf("the cut-off %s serves a configuration other than its last-known one: %s", ma.ID, diff)
	}
	if onA.denies(t)[slc("slc-2")] {
		t.Errorf("the cut-off %s denies slc-2, quarantined only on the other side of the partition", ma.ID)
	}
	wantRBACDeny(onA, ma.ID+" (cut off)", "slc-1")
	wantForwarded(onA, ma.ID+" (cut off)", "slc-3") // its ext_authz is a's, answering from its replica
	if ps := proxyStatusOf(t, c, a, "gw-north"); ps == nil || ps["DenyAll"] != false {
		t.Errorf("%s's /v1/proxies for gw-north: %v; want it served its configuration, not deny-all", ma.ID, ps)
	}
	// The gateway's own stream on a was ended by a when it found itself
	// cut off (node/xdsstreams.go), so that the gateway dials again, to
	// another member if it can reach one; it received nothing new before.
	testwait.For(t, 5*time.Second, "the cut-off "+ma.ID+" to end the gateway's stream", func() bool { return gw.failed() != nil })
	t.Logf("the cut-off %s ended the gateway's stream %v after the partition: %v", ma.ID, time.Since(partitioned).Round(time.Millisecond), gw.failed())
	if got := gw.responsesSince(partitioned); len(got) > 0 {
		t.Errorf("the gateway's stream to the cut-off %s received %v after the partition", ma.ID, got)
	}
	if diff := gw.config().diff(before, nil); diff != "" {
		t.Errorf("the gateway's configuration on the cut-off %s changed during the partition: %s", ma.ID, diff)
	}
	t.Logf("on the cut-off %s: a new stream gets the last-known configuration (%s); slc-1 refused by RBAC, slc-2 not known to be quarantined", ma.ID, onA)

	// What the cluster serves: a fresh gateway stream on the leader.
	ref := dialGateway(t, ml.XDSAddr, node, nil)
	_, want := ref.waitFor(t, 10*time.Second, "the leader's configuration with slc-2's quarantine", func(cfg *gwConfig) bool {
		return cfg.complete() && cfg.denies(t)[slc("slc-2")]
	})
	want.check(t, ml.ID, ml.AuthzAddr)
	ref.close()

	// Its stream ended, the gateway dials the next member of its
	// bootstrap, b, as Envoy re-dials its ADS cluster: with the versions
	// it last accepted.
	last := gw.config()
	gw.close()
	moved := time.Now()
	gw = dialGateway(t, members[1], node, last)
	convergedAt, onB := gw.waitFor(t, 30*time.Second, "the gateway on "+mb.ID+" to converge to the cluster's configuration", func(cfg *gwConfig) bool {
		return cfg.complete() && cfg.diff(want, map[string]string{cfg.addr: authzOf[cfg.addr], want.addr: ml.AuthzAddr}) == ""
	})
	converge := convergedAt.Sub(moved)
	onB.check(t, mb.ID, mb.AuthzAddr) // its ext_authz moved to b too
	if !maps.Equal(onB.versions, want.versions) {
		t.Errorf("the gateway on %s holds versions %v; a fresh stream on the leader gets %v", mb.ID, onB.versions, want.versions)
	}
	// Exactly what b serves: a fresh stream on b gets the same versions
	// and bytes.
	fresh := dialGateway(t, members[1], node, nil)
	_, onBFresh := fresh.waitFor(t, 10*time.Second, "a fresh stream's configuration from "+mb.ID, (*gwConfig).complete)
	fresh.close()
	if diff := onB.diff(onBFresh, nil); diff != "" {
		t.Errorf("the gateway that moved to %s holds other than what %s serves a fresh stream: %s", mb.ID, mb.ID, diff)
	}
	if d := onB.denies(t); !d[slc("slc-1")] || !d[slc("slc-2")] || d[slc("slc-3")] {
		t.Errorf("the gateway on %s denies %v; want slc-1 and slc-2, not slc-3", mb.ID, gwKeys(d))
	}
	wantRBACDeny(onB, mb.ID, "slc-2")
	wantRBACDeny(onB, mb.ID, "slc-1")
	wantForwarded(onB, mb.ID, "slc-3")
	t.Logf("gateway moved to %s %v after the quarantine was committed: converged to the cluster's configuration %v after dialling (%s)",
		mb.ID, moved.Sub(committed).Round(time.Millisecond), converge.Round(time.Millisecond), onB)
	if converge > 10*time.Second {
		t.Errorf("the gateway took %v to converge on %s; a quarantine push takes well under a second", converge, mb.ID)
	}

	// Only members dial each other's proxies: a connection whose source
	// the FaultNet could not name escaped the partition.
	if n := unnamedSince(fn, unnamed); n > 0 {
		t.Errorf("the FaultNet could not name the source of %d connection(s) to members during the partition, which were therefore not cut (%s)", n, pairSummary(fn.Stats()))
	}

	// Heal: a catches up, and the observer stream, still on a, gets the
	// quarantine pushed; then a gateway reconnecting to a gets what b
	// serves.
	fn.HealAll()
	healed := time.Now()
	// When a says it is in contact again, and whether it has the
	// quarantine by then.
	var contactAt time.Time
	var contactRev topology.Revision
	testwait.For(t, 30*time.Second, ma.ID+" to report contact with the leader after healing", func() bool {
		n, err := c.Client(a).Node(ctxFor(t, 2*time.Second))
		if err != nil || nodeQuorum(n)["contact"] != true {
			return false
		}
		contactAt = time.Now()
		if top, err := c.Client(a).Topology(ctxFor(t, 2*time.Second)); err == nil {
			contactRev = top.Revision
		}
		return true
	})
	caughtUp := waitRevision(t, c, []int{a}, q2.Revision, 30*time.Second)
	t.Logf("after healing: %s reports contact with the leader after %v, at revision %d (the quarantine is revision %d)",
		ma.ID, contactAt.Sub(healed).Round(time.Millisecond), contactRev, q2.Revision)
	// The gateway left on a gets the quarantine; it dials a again, as
	// Envoy does, if a ended its connection once more (a member that hears
	// from the leader and then loses it again while its raft connections
	// are re-established is found cut off again).
	var pushedAt time.Time
	testwait.For(t, 20*time.Second, "the gateway left on "+ma.ID+" to get slc-2's quarantine after healing", func() bool {
		if observer.failed() != nil {
			prev := observer.config()
			observer.close()
			observer = dialGateway(t, members[0], node, prev)
		}
		if cfg := observer.config(); cfg.complete() && cfg.denies(t)[slc("slc-2")] {
			pushedAt = time.Now()
			return true
		}
		return false
	})
	t.Logf("after healing: %s applied slc-2's quarantine (revision %d) after %v; the gateway stream left on it got it after %v",
		ma.ID, q2.Revision, caughtUp.Sub(healed).Round(time.Millisecond), pushedAt.Sub(healed).Round(time.Millisecond))
	if d := pushedAt.Sub(healed); d > 30*time.Second {
		t.Errorf("%s's gateway stream caught up %v after healing", ma.ID, d)
	}
	observer.close()
	// a forgets the node once its last stream has closed: a gateway
	// reconnecting then gets a configuration built afresh, as on b.
	testwait.For(t, 10*time.Second, ma.ID+" to see the gateway's streams close", func() bool {
		ps := proxyStatusOf(t, c, a, "gw-north")
		return ps == nil || ps["Streams"] == float64(0)
	})
	back := dialGateway(t, members[0], node, nil)
	_, onA = back.waitFor(t, 10*time.Second, "a complete configuration from "+ma.ID+" after healing", (*gwConfig).complete)
	onA.check(t, ma.ID, ma.AuthzAddr)
	if diff := onA.diff(gw.config(), map[string]string{onA.addr: ma.AuthzAddr, gw.addr: mb.AuthzAddr}); diff != "" {
		t.Errorf("after healing, a gateway reconnecting to %s gets other than what %s serves: %s", ma.ID, mb.ID, diff)
	}
	if !maps.Equal(onA.versions, gw.config().versions) {
		t.Errorf("after healing, versions on %s %v, on %s %v", ma.ID, onA.versions, mb.ID, gw.config().versions)
	}
	wantRBACDeny(onA, ma.ID+" (healed)", "slc-2")
	wantForwarded(onA, ma.ID+" (healed)", "slc-3")
	t.Logf("after healing, a gateway reconnecting to %s gets what %s serves: %s", ma.ID, mb.ID, onA)
}

// waitRevision waits until each member has applied rev and returns when
// the last one had.
func waitRevision(t *testing.T, c *harness.Cluster, members []int, rev topology.Revision, d time.Duration) time.Time {
	t.Helper()
	for _, i := range members {
		var got topology.Revision
		testwait.For(t, d, fmt.Sprintf("%s to apply revision %d", c.Member(i).ID, rev), func() bool {
			top, err := c.Client(i).Topology(ctxFor(t, 2*time.Second))
			if err == nil {
				got = top.Revision
			}
			return got >= rev
		})
	}
	return time.Now()
}

// unnamedSince counts the connections the FaultNet accepted since before
// from a source it could not name (harness.ClientEndpoint).
func unnamedSince(fn *harness.FaultNet, before harness.FaultStats) int64 {
	var n int64
	for p, ps := range fn.Stats().Pairs {
		if p.From == harness.ClientEndpoint {
			n += ps.Accepted - before.Pairs[p].Accepted
		}
	}
	return n
}

// proxyStatusOf is member i's /v1/proxies entry for node, nil if none.
func proxyStatusOf(t *testing.T, c *harness.Cluster, i int, node string) map[string]any {
	t.Helper()
	st, err := c.Client(i).Proxies(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatalf("%s: /v1/proxies: %v", c.Member(i).ID, err)
	}
	list, _ := st["Proxies"].([]any)
	if list == nil {
		list, _ = st["proxies"].([]any)
	}
	for _, p := range list {
		if m, _ := p.(map[string]any); m != nil && m["NodeID"] == node {
			return m
		}
	}
	return nil
}

// bootstrapXDSMembers lists the addresses of the bootstrap's xDS cluster.
func bootstrapXDSMembers(t *testing.T, clusters []*clusterv3.Cluster) []string {
	t.Helper()
	for _, cl := range clusters {
		if cl.GetName() != "vigil_xds" {
			continue
		}
		var out []string
		for _, le := range cl.GetLoadAssignment().GetEndpoints() {
			for _, lb := range le.GetLbEndpoints() {
				sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
				out = append(out, net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
			}
		}
		return out
	}
	t.Fatal("the bootstrap has no vigil_xds cluster")
	return nil
}

// gwConfig is what a gateway holds: per type, the version it accepted and
// the resources by name.
type gwConfig struct {
	addr     string // the member it came from
	versions map[string]string
	res      map[string]map[string]*anypb.Any
	routes   []string // RDS names its listeners ask for
	eds      []string // EDS names its clusters ask for
	// got are the types the member has answered on this stream (a
	// gateway that reconnected holds its last stream's until then).
	got map[string]bool
}

func (c *gwConfig) String() string {
	var parts []string
	for _, ty := range gwTypes {
		names := gwKeys(c.res[ty])
		parts = append(parts, fmt.Sprintf("%s v%s %v", gwShort(ty), c.versions[ty], names))
	}
	return strings.Join(parts, "; ")
}

func gwKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// complete: every type answered on this stream, and the routes and
// endpoints the listeners and clusters name all there.
func (c *gwConfig) complete() bool {
	for _, ty := range []string{gwLDS, gwCDS} {
		if !c.got[ty] {
			return false
		}
	}
	for ty, names := range map[string][]string{gwRDS: c.routes, gwEDS: c.eds} {
		if len(names) > 0 && !c.got[ty] {
			return false
		}
		for _, n := range names {
			if c.res[ty][n] == nil {
				return false
			}
		}
	}
	return true
}

// check fails t unless c is a gateway's configuration (not deny-all)
// whose ext_authz is the authorizer at authz.
func (c *gwConfig) check(t *testing.T, from, authz string) {
	t.Helper()
	if !c.complete() {
		t.Fatalf("the configuration from %s is incomplete: %s", from, c)
	}
	if !slices.Equal(gwKeys(c.res[gwLDS]), []string{"vigil-gateway"}) || !slices.Equal(c.routes, []string{"vigil-gateway-routes"}) ||
		c.res[gwCDS]["svc-telemetry"] == nil {
		t.Fatalf("the configuration from %s is not gw-north's (deny-all?): %s", from, c)
	}
	if got := c.authzEndpoint(t); got != authz {
		t.Errorf("the configuration from %s sends ext_authz to %s, want %s (that member's authorizer)", from, got, authz)
	}
}

// authzEndpoint is the address of the ext_authz cluster.
func (c *gwConfig) authzEndpoint(t *testing.T) string {
	t.Helper()
	cl := c.cluster(t, gwAuthzCluster)
	if cl == nil {
		return ""
	}
	for _, le := range cl.GetLoadAssignment().GetEndpoints() {
		for _, lb := range le.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		}
	}
	return ""
}

func (c *gwConfig) cluster(t *testing.T, name string) *clusterv3.Cluster {
	a := c.res[gwCDS][name]
	if a == nil {
		return nil
	}
	var cl clusterv3.Cluster
	if err := a.UnmarshalTo(&cl); err != nil {
		t.Fatalf("cluster %s: %v", name, err)
	}
	return &cl
}

// diff describes how c differs from o ("" when it does not): versions
// and every resource. authz, when set, maps each configuration's member
// (addr) to its authorizer: the ext_authz cluster may then differ in its
// endpoint only, each pointing at its own member's authorizer (checked).
func (c *gwConfig) diff(o *gwConfig, authz map[string]string) string {
	var out []string
	if authz == nil && !maps.Equal(c.versions, o.versions) {
		out = append(out, fmt.Sprintf("versions %v, want %v", c.versions, o.versions))
	}
	for _, ty := range gwTypes {
		if got, want := gwKeys(c.res[ty]), gwKeys(o.res[ty]); !slices.Equal(got, want) {
			out = append(out, fmt.Sprintf("%s names %v, want %v", gwShort(ty), got, want))
			continue
		}
		for name, r := range c.res[ty] {
			mine, theirs := proto.Message(r), proto.Message(o.res[ty][name])
			if ty == gwCDS && name == gwAuthzCluster && authz != nil {
				var why string
				mine, why = authzNormalized(r, authz[c.addr])
				if why == "" {
					theirs, why = authzNormalized(o.res[ty][name], authz[o.addr])
				}
				if why != "" {
					out = append(out, why)
					continue
				}
			}
			if !proto.Equal(mine, theirs) {
				out = append(out, fmt.Sprintf("%s %s differs", gwShort(ty), name))
			}
		}
	}
	slices.Sort(out)
	return strings.Join(out, "; ")
}

// authzNormalized is the ext_authz cluster a with its endpoint's port
// zeroed, after checking that it is addr.
func authzNormalized(a *anypb.Any, addr string) (proto.Message, string) {
	var cl clusterv3.Cluster
	if err := a.UnmarshalTo(&cl); err != nil {
		return nil, err.Error()
	}
	n := 0
	for _, le := range cl.GetLoadAssignment().GetEndpoints() {
		for _, lb := range le.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if got := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))); got != addr {
				return nil, fmt.Sprintf("ext_authz endpoint %s, want its member's authorizer %s", got, addr)
			}
			sa.PortSpecifier = &corev3.SocketAddress_PortValue{}
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Sprintf("ext_authz cluster with %d endpoints, want 1", n)
	}
	return &cl, ""
}

// denies lists the SPIFFE IDs the gateway's RBAC refuses on every virtual
// host of its routes: the quarantine (a DENY policy of authenticated
// principals in each virtual host's RBACPerRoute).
func (c *gwConfig) denies(t *testing.T) map[string]bool {
	t.Helper()
	counts, hosts := map[string]int{}, 0
	for name, a := range c.res[gwRDS] {
		var rc routev3.RouteConfiguration
		if err := a.UnmarshalTo(&rc); err != nil {
			t.Fatalf("route configuration %s: %v", name, err)
		}
		for _, vh := range rc.GetVirtualHosts() {
			hosts++
			seen := map[string]bool{}
			if pf := vh.GetTypedPerFilterConfig()["envoy.filters.http.rbac"]; pf != nil {
				var per rbachttpv3.RBACPerRoute
				if err := pf.UnmarshalTo(&per); err != nil {
					t.Fatalf("virtual host %s: RBAC per route: %v", vh.GetName(), err)
				}
				if rules := per.GetRbac().GetRules(); rules.GetAction() == rbacconfigv3.RBAC_DENY {
					for _, pol := range rules.GetPolicies() {
						for _, pr := range pol.GetPrincipals() {
							principalIDs(pr, seen)
						}
					}
				}
			}
			for id := range seen {
				counts[id]++
			}
		}
	}
	out := map[string]bool{}
	for id, n := range counts {
		if n == hosts {
			out[id] = true
		}
	}
	return out
}

func principalIDs(pr *rbacconfigv3.Principal, out map[string]bool) {
	if id := pr.GetAuthenticated().GetPrincipalName().GetExact(); id != "" {
		out[id] = true
	}
	for _, p := range pr.GetOrIds().GetIds() {
		principalIDs(p, out)
	}
}

// model is c as envoymodel's resources.
func (c *gwConfig) model(t *testing.T) *envoymodel.Resources {
	t.Helper()
	res := &envoymodel.Resources{}
	for _, name := range gwKeys(c.res[gwLDS]) {
		m := &listenerv3.Listener{}
		gwMust(t, c.res[gwLDS][name].UnmarshalTo(m))
		res.Listeners = append(res.Listeners, m)
	}
	for _, name := range gwKeys(c.res[gwRDS]) {
		m := &routev3.RouteConfiguration{}
		gwMust(t, c.res[gwRDS][name].UnmarshalTo(m))
		res.Routes = append(res.Routes, m)
	}
	for _, name := range gwKeys(c.res[gwCDS]) {
		m := &clusterv3.Cluster{}
		gwMust(t, c.res[gwCDS][name].UnmarshalTo(m))
		res.Clusters = append(res.Clusters, m)
	}
	for _, name := range gwKeys(c.res[gwEDS]) {
		m := &endpointv3.ClusterLoadAssignment{}
		gwMust(t, c.res[gwEDS][name].UnmarshalTo(m))
		res.Endpoints = append(res.Endpoints, m)
	}
	return res
}

func gwMust(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// xdsGateway is a gateway's Envoy on one ADS (SotW) stream to one member.
type xdsGateway struct {
	addr   string
	node   *corev3.Node
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{}
	more   chan struct{} // signalled on every response

	mu        sync.Mutex
	cfg       *gwConfig
	nonces    map[string]string
	subs      map[string][]string // names asked per type (nil: wildcard)
	responses []gwResponse
	err       error // why the stream ended, if it did (not by close)
}

type gwResponse struct {
	at            time.Time
	typeURL, vers string
}

func (r gwResponse) String() string { return gwShort(r.typeURL) + " v" + r.vers }

// dialGateway connects to the member at addr as node and subscribes as
// Envoy does; prev, when set, is the configuration it held on its last
// stream: it asks for the same names, naming the versions it accepted,
// and keeps those resources until the member sends its own.
func dialGateway(t *testing.T, addr string, node *corev3.Node, prev *gwConfig) *xdsGateway {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		conn.Close()
		t.Fatalf("ADS stream to %s: %v", addr, err)
	}
	g := &xdsGateway{addr: addr, node: node, conn: conn, cancel: cancel, done: make(chan struct{}), more: make(chan struct{}, 1),
		cfg:    &gwConfig{addr: addr, versions: map[string]string{}, res: map[string]map[string]*anypb.Any{}, got: map[string]bool{}},
		nonces: map[string]string{}, subs: map[string][]string{}}
	if prev != nil {
		g.cfg.versions, g.cfg.routes, g.cfg.eds = maps.Clone(prev.versions), slices.Clone(prev.routes), slices.Clone(prev.eds)
		for ty, m := range prev.res {
			g.cfg.res[ty] = maps.Clone(m)
		}
	}
	t.Cleanup(g.close)
	first := true
	send := func(ty string) error {
		req := &discoveryv3.DiscoveryRequest{TypeUrl: ty, VersionInfo: g.cfg.versions[ty], ResponseNonce: g.nonces[ty], ResourceNames: g.subs[ty]}
		if first { // the bootstrap sets set_node_on_first_message_only
			req.Node, first = g.node, false
		}
		return st.Send(req)
	}
	// Subscriptions go out under g.mu, on this goroutine and then the
	// receiver's only.
	g.mu.Lock()
	for _, ty := range []string{gwCDS, gwLDS} {
		g.subs[ty] = nil
		if err := send(ty); err != nil {
			g.mu.Unlock()
			t.Fatalf("ADS request to %s: %v", addr, err)
		}
	}
	for ty, names := range map[string][]string{gwRDS: g.cfg.routes, gwEDS: g.cfg.eds} {
		if len(names) > 0 {
			g.subs[ty] = names
			if err := send(ty); err != nil {
				g.mu.Unlock()
				t.Fatalf("ADS request to %s: %v", addr, err)
			}
		}
	}
	g.mu.Unlock()
	go func() {
		defer close(g.done)
		for {
			resp, err := st.Recv()
			if err != nil {
				g.mu.Lock()
				if ctx.Err() == nil {
					g.err = err
				}
				g.mu.Unlock()
				g.signal()
				return
			}
			if err := g.receive(resp, send); err != nil {
				g.mu.Lock()
				g.err = err
				g.mu.Unlock()
				g.signal()
				cancel()
				return
			}
			g.signal()
		}
	}()
	return g
}

func (g *xdsGateway) signal() {
	select {
	case g.more <- struct{}{}:
	default:
	}
}

// receive takes a response in, subscribes to what it names and ACKs it,
// in that order, as Envoy does.
func (g *xdsGateway) receive(resp *discoveryv3.DiscoveryResponse, send func(string) error) error {
	ty := resp.GetTypeUrl()
	if !slices.Contains(gwTypes, ty) {
		return fmt.Errorf("unrequested type %s", ty)
	}
	res := map[string]*anypb.Any{}
	var names []string
	for _, a := range resp.GetResources() {
		switch ty {
		case gwLDS:
			var l listenerv3.Listener
			if err := a.UnmarshalTo(&l); err != nil {
				return err
			}
			res[l.GetName()] = a
			for _, fc := range l.GetFilterChains() {
				for _, f := range fc.GetFilters() {
					var hcm hcmv3.HttpConnectionManager
					if f.GetTypedConfig().UnmarshalTo(&hcm) == nil && hcm.GetRds() != nil {
						names = append(names, hcm.GetRds().GetRouteConfigName())
					}
				}
			}
		case gwCDS:
			var cl clusterv3.Cluster
			if err := a.UnmarshalTo(&cl); err != nil {
				return err
			}
			res[cl.GetName()] = a
			if cl.GetType() == clusterv3.Cluster_EDS {
				names = append(names, cmp.Or(cl.GetEdsClusterConfig().GetServiceName(), cl.GetName()))
			}
		case gwRDS:
			var rc routev3.RouteConfiguration
			if err := a.UnmarshalTo(&rc); err != nil {
				return err
			}
			res[rc.GetName()] = a
		case gwEDS:
			var la endpointv3.ClusterLoadAssignment
			if err := a.UnmarshalTo(&la); err != nil {
				return err
			}
			res[la.GetClusterName()] = a
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cfg.res[ty], g.cfg.versions[ty], g.nonces[ty], g.cfg.got[ty] = res, resp.GetVersionInfo(), resp.GetNonce(), true
	g.responses = append(g.responses, gwResponse{time.Now(), ty, resp.GetVersionInfo()})
	follow := map[string]string{gwLDS: gwRDS, gwCDS: gwEDS}[ty]
	if follow != "" {
		if ty == gwLDS {
			g.cfg.routes = names
		} else {
			g.cfg.eds = names
		}
		if _, asked := g.subs[follow]; !asked || !slices.Equal(g.subs[follow], names) {
			g.subs[follow] = names
			if err := send(follow); err != nil {
				return err
			}
		}
	}
	return send(ty) // the ACK
}

// config is a copy of what the gateway holds now.
func (g *xdsGateway) config() *gwConfig {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.configLocked()
}

func (g *xdsGateway) configLocked() *gwConfig {
	out := &gwConfig{addr: g.cfg.addr, versions: maps.Clone(g.cfg.versions), res: map[string]map[string]*anypb.Any{},
		routes: slices.Clone(g.cfg.routes), eds: slices.Clone(g.cfg.eds), got: maps.Clone(g.cfg.got)}
	for ty, m := range g.cfg.res {
		out.res[ty] = maps.Clone(m)
	}
	return out
}

// waitFor waits until the gateway's configuration satisfies ok and
// returns it with the time of the response that made it so.
func (g *xdsGateway) waitFor(t *testing.T, d time.Duration, what string, ok func(*gwConfig) bool) (time.Time, *gwConfig) {
	t.Helper()
	deadline := time.After(d)
	for {
		g.mu.Lock()
		var at time.Time
		if n := len(g.responses); n > 0 {
			at = g.responses[n-1].at
		}
		err := g.err
		cfg := g.configLocked()
		g.mu.Unlock()
		if ok(cfg) {
			return at, cfg
		}
		if err != nil {
			t.Fatalf("waiting for %s: the stream to %s ended: %v", what, g.addr, err)
		}
		select {
		case <-g.more:
		case <-deadline:
			t.Fatalf("no %s within %v; it holds %s", what, d, g.config())
		}
	}
}

// responsesSince lists the responses received after since.
func (g *xdsGateway) responsesSince(since time.Time) []gwResponse {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []gwResponse
	for _, r := range g.responses {
		if r.at.After(since) {
			out = append(out, r)
		}
	}
	return out
}

// failed is why the stream ended, nil while it is up.
func (g *xdsGateway) failed() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// close ends the stream and the connection, as Envoy leaving the member.
func (g *xdsGateway) close() {
	g.cancel()
	g.conn.Close()
	<-g.done
}
