package e2e_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology"
)

// partitionDoc is a small city: two zones' street lights whose telemetry
// flow is essential and whose firmware flow is not.
func partitionDoc() *topology.Document {
	doc := &topology.Document{
		APIVersion: topology.APIVersion, TrustDomain: "city.example",
		Zones:         []topology.Zone{{Name: "north"}, {Name: "cloud"}},
		Gateways:      []topology.Gateway{{Name: "gw-north", Zone: "north"}},
		DeviceClasses: []topology.DeviceClass{{Name: "streetlight"}},
		Services: []topology.Service{
			{Name: "telemetry", Zone: "cloud", Protocol: "http", Hosts: []string{"telemetry.city.example"}, Endpoints: []string{"127.0.0.1:8443"}},
			{Name: "firmware", Zone: "cloud", Protocol: "http", Hosts: []string{"firmware.city.example"}, Endpoints: []string{"127.0.0.1:8444"}},
		},
		Flows: []topology.Flow{
			{Name: "lights-telemetry", Essential: true, From: topology.Selector{Classes: []string{"streetlight"}}, To: topology.Selector{Service: "telemetry"},
				HTTP: &topology.HTTPMatch{Methods: []string{"POST"}, Paths: []string{"/api/v1/telemetry"}}},
			{Name: "lights-firmware", From: topology.Selector{Classes: []string{"streetlight"}}, To: topology.Selector{Service: "firmware"},
				HTTP: &topology.HTTPMatch{Methods: []string{"GET"}, Paths: []string{"/firmware/*"}}},
		},
	}
	for _, name := range []string{"slc-1", "slc-2", "slc-3", "slc-4"} {
		doc.Devices = append(doc.Devices, topology.Device{Name: name, Class: "streetlight", Gateway: "gw-north"})
	}
	return doc
}

// nodeQuorum is the quorum part of GET /v1/node.
func nodeQuorum(node map[string]any) map[string]any {
	parts, _ := node["parts"].(map[string]any)
	q, _ := parts["quorum"].(map[string]any)
	return q
}

func lightCheck(device, host, method, path string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: "spiffe://city.example/zone/north/device/" + device},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: host,
		}},
	}}
}

// TestPartitionedMemberKeepsEnforcing proves the guarantees of a member cut
// off from its quorum (docs/reliability.md): it refuses writes within 2 s,
// naming the partition; it keeps deciding from its last-known replica,
// quarantines committed before included, and marks those decisions stale in
// its decision log and /v1/node; past --max-staleness it allows only
// essential flows; `quarantine --local` takes effect on it at once and is
// committed exactly once when the partition heals; a crash and restart
// while cut off brings back the state it had applied, not an older one; the
// majority keeps accepting writes throughout.
func TestPartitionedMemberKeepsEnforcing(t *testing.T) {
	fn := harness.NewFaultNet()
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 3, Faults: fn,
		Args: []string{"--max-staleness", "5s", "--monitor=false"}})
	data, err := json.Marshal(partitionDoc())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client(0).ApplyTopology(ctxFor(t, 30*time.Second), data); err != nil {
		t.Fatal(err)
	}
	q, err := c.Client(0).Quarantine(ctxFor(t, 10*time.Second), topology.KindDevice, "slc-1", "seen tampering before the partition")
	if err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader()
	if err != nil {
		t.Fatal(err)
	}
	cut := (leader + 1) % 3 // a follower
	for i := range 3 {
		cl := c.Client(i)
		cl.MinRevision = q.Revision
		if _, err := cl.Subject(ctxFor(t, 10*time.Second), topology.KindDevice, "slc-1"); err != nil {
			t.Fatalf("%s did not reach the quarantine's revision: %v", c.Member(i).ID, err)
		}
	}
	authz, _ := authzClient(t, c, cut)
	decide := func(req *authv3.CheckRequest) (bool, string) {
		t.Helper()
		resp, err := authz.Check(ctxFor(t, 5*time.Second), req)
		if err != nil {
			t.Fatalf("Check on %s: %v", c.Member(cut).ID, err)
		}
		return codes.Code(resp.GetStatus().GetCode()) == codes.OK, resp.GetDeniedResponse().GetBody()
	}
	firmware := lightCheck("slc-2", "firmware.city.example", "GET", "/firmware/a.bin")
	telemetry := lightCheck("slc-2", "telemetry.city.example", "POST", "/api/v1/telemetry")

	others := []string{}
	for i := range 3 {
		if i != cut {
			others = append(others, c.Member(i).ID)
		}
	}
	cutID := c.Member(cut).ID
	fn.Isolate(cutID, others...)
	partitionedAt := time.Now()
	t.Logf("%s isolated from %v (leader %s)", cutID, others, c.Member(leader).ID)

	// A write sent to the cut-off member as the partition begins is
	// answered within 2 s: refused, naming the partition, or (if it was
	// already on its way to the leader) reported as of unknown outcome.
	_, err = c.Client(cut).Quarantine(ctxFor(t, 15*time.Second), topology.KindDevice, "slc-4", "written on the cut-off member")
	answeredIn := time.Since(partitionedAt)
	var apiErr *api.Error
	if !errors.As(err, &apiErr) ||
		!(apiErr.Code == api.CodePartitioned && strings.Contains(apiErr.Message, "cut off from the cluster's quorum")) &&
			!(apiErr.Code == api.CodeTimeout && strings.Contains(apiErr.Message, "may or may not have been applied")) {
		t.Fatalf("a write on the cut-off member: %v; want code %q naming the partition", err, api.CodePartitioned)
	}
	if answeredIn > 2*time.Second {
		t.Errorf("the write was answered %v after the partition; the guarantee is 2s", answeredIn)
	}
	t.Logf("write sent as the partition began answered after %v (%s): %s", answeredIn.Round(time.Millisecond), apiErr.Code, apiErr.Message)
	// Once cut off, a write is refused at once, proposed nowhere.
	start := time.Now()
	if _, err := c.Client(cut).Release(ctxFor(t, 15*time.Second), topology.KindDevice, "slc-1"); !errors.As(err, &apiErr) || apiErr.Code != api.CodePartitioned {
		t.Fatalf("a second write: %v; want %q", err, api.CodePartitioned)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("a write on a member known to be cut off took %v to be refused", d)
	}
	t.Logf("a write on the member already cut off refused in %v: %s", time.Since(start).Round(time.Millisecond), apiErr.Message)

	// The majority keeps writing.
	majority := (cut + 1) % 3
	if _, err := c.Client(majority).Quarantine(ctxFor(t, 10*time.Second), topology.KindDevice, "slc-4", "committed by the majority during the partition"); err != nil {
		t.Fatalf("the majority refused a write during the partition: %v", err)
	}

	// It keeps enforcing: the committed quarantine stands, the rest is
	// allowed, and /v1/node says it is stale.
	if ok, body := decide(lightCheck("slc-1", "telemetry.city.example", "POST", "/api/v1/telemetry")); ok {
		t.Fatalf("the cut-off member allowed a device quarantined before the partition: %s", body)
	}
	if ok, body := decide(firmware); !ok {
		t.Fatalf("the cut-off member denied a flow its replica allows, before --max-staleness: %s", body)
	}
	node, err := c.Client(cut).Node(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	quorum := nodeQuorum(node)
	if quorum["stale"] != true || quorum["contact"] != false {
		t.Fatalf("/v1/node quorum on the cut-off member: %v; want stale and no contact", quorum)
	}

	// A local quarantine takes effect there at once, and nowhere else yet.
	lq, err := c.Client(cut).QuarantineLocal(ctxFor(t, 5*time.Second), topology.KindDevice, "slc-3", "contained on site while cut off")
	if err != nil {
		t.Fatalf("local quarantine: %v", err)
	}
	if !lq.Pending || !lq.Quarantined {
		t.Fatalf("local quarantine answer %+v", lq)
	}
	if ok, body := decide(lightCheck("slc-3", "telemetry.city.example", "POST", "/api/v1/telemetry")); ok {
		t.Fatalf("the local quarantine is not in force on its member: %s", body)
	}
	if s, err := c.Client(majority).Subject(ctxFor(t, 5*time.Second), topology.KindDevice, "slc-3"); err != nil || s.Quarantined {
		t.Fatalf("the majority holds slc-3 quarantined (%v) before the partition healed", err)
	}

	// Past --max-staleness (5s) only essential flows.
	time.Sleep(time.Until(partitionedAt.Add(6500 * time.Millisecond)))
	if ok, body := decide(firmware); ok || !strings.Contains(body, "only essential flows are allowed") {
		t.Fatalf("past --max-staleness a non-essential flow: allowed=%v %s", ok, body)
	}
	if ok, body := decide(telemetry); !ok {
		t.Fatalf("past --max-staleness the essential flow was denied: %s", body)
	}
	if node, err = c.Client(cut).Node(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if quorum = nodeQuorum(node); quorum["restricted"] != true || quorum["localPending"] != float64(1) {
		t.Fatalf("/v1/node quorum past --max-staleness: %v; want restricted and one local quarantine pending", quorum)
	}

	// A crash while cut off: the member comes back deciding from the
	// state it had applied (not its older snapshot), its local quarantine
	// included, and still counts its staleness from its last contact.
	if err := c.Kill(cut); err != nil {
		t.Fatal(err)
	}
	restartAt := time.Now()
	if err := c.Restart(cut); err != nil {
		t.Fatalf("restart while cut off: %v", err)
	}
	// It first asks the other members whether any answers (one that can
	// reach another is only behind, and waits to catch up), then decides
	// from what it had applied.
	for {
		n, err := c.Client(cut).Node(ctxFor(t, 5*time.Second))
		if err == nil && n["ready"] == true {
			break
		}
		if time.Since(restartAt) > 15*time.Second {
			t.Fatalf("restarted while cut off, the member is not ready after 15s: %v %v", n["ready"], err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("restarted while cut off: ready after %v", time.Since(restartAt).Round(time.Millisecond))
	authz, _ = authzClient(t, c, cut)
	for _, dev := range []string{"slc-1", "slc-3"} {
		if ok, body := decide(lightCheck(dev, "telemetry.city.example", "POST", "/api/v1/telemetry")); ok {
			t.Fatalf("after a restart while cut off, %s (quarantined before: committed or local) was allowed: %s", dev, body)
		}
	}
	if ok, body := decide(firmware); ok || !strings.Contains(body, "only essential flows are allowed") {
		t.Fatalf("after a restart while cut off, past --max-staleness a non-essential flow: allowed=%v %s", ok, body)
	}
	if ok, body := decide(telemetry); !ok {
		t.Fatalf("after a restart while cut off, the essential flow was denied: %s", body)
	}

	// Heal: the local quarantine is committed, once, by the operator who
	// took it; the member follows the cluster again.
	fn.HealAll()
	healedAt := time.Now()
	var s *api.Subject
	for {
		s, err = c.Client(majority).Subject(ctxFor(t, 5*time.Second), topology.KindDevice, "slc-3")
		if err == nil && s.Quarantined {
			break
		}
		if time.Since(healedAt) > 20*time.Second {
			t.Fatalf("the local quarantine was not committed within 20s of healing: %v %+v", err, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("local quarantine committed %v after healing", time.Since(healedAt).Round(time.Millisecond))
	if q := s.State.Quarantine; q.Reason != "contained on site while cut off" || q.By == api.PeerActor {
		t.Fatalf("committed quarantine %+v; want the local one, by its operator", q)
	}
	for {
		node, err = c.Client(cut).Node(ctxFor(t, 5*time.Second))
		if err == nil {
			quorum = nodeQuorum(node)
			if quorum["contact"] == true && quorum["localPending"] == nil {
				break
			}
		}
		if time.Since(healedAt) > 20*time.Second {
			t.Fatalf("after healing the member's quorum status is %v (%v)", quorum, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ok, body := decide(firmware); !ok {
		t.Fatalf("after healing a non-essential flow is still denied: %s", body)
	}
	// Exactly once: the proposal carries the quarantine's ID as its nonce,
	// which every replica refuses a second time
	// (raft.TestLocalQuarantineOnACutOffMember proposes it twice).

	// Its decision log marked the decisions made while cut off.
	stale := 0
	f, err := os.Open(filepath.Join(c.Member(cut).DataDir, "decisions.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			StaleMS int64 `json:"stale_ms"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.StaleMS > 0 {
			stale++
		}
	}
	if stale < 5 {
		t.Errorf("%d decisions in the cut-off member's log are marked stale_ms; want every one made while cut off (at least 5)", stale)
	}
}
