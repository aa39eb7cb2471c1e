package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology"
)

const monitorDoc = `apiVersion: vigil/v1
trustDomain: city.example
zones: [{name: north}, {name: south}, {name: cloud}]
gateways: [{name: gw-1, zone: north}, {name: gw-2, zone: south}]
deviceClasses:
  - name: sensor
  - name: camera
    response: {mode: approve}
devices:
  - {name: sen-1, class: sensor, gateway: gw-1}
  - {name: sen-2, class: sensor, gateway: gw-1}
  - {name: sen-3, class: sensor, gateway: gw-1}
  - {name: cam-1, class: camera, gateway: gw-2}
services:
  - {name: telemetry, zone: cloud, protocol: http, hosts: [telemetry.city.example], endpoints: ["10.0.0.1:8443"]}
flows:
  - {name: t, from: {classes: [sensor, camera]}, to: {service: telemetry}, http: {methods: [POST], paths: ["/t"]}, essential: true}
`

// authzClients dials every member's ext_authz.
func authzClients(t *testing.T, c *harness.Cluster) []authv3.AuthorizationClient {
	out := make([]authv3.AuthorizationClient, c.Size())
	for i := range out {
		cc, err := grpc.NewClient(c.Member(i).AuthzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		out[i] = authv3.NewAuthorizationClient(cc)
	}
	return out
}

// asGateway asks as the device's gateway would: the gateway's identity,
// the device's in x-forwarded-client-cert.
func asGateway(ctx context.Context, cl authv3.AuthorizationClient, zone, gw, dev, method, host, path string) (bool, error) {
	resp, err := cl.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: "spiffe://city.example/zone/" + zone + "/gateway/" + gw},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: host, Size: 200,
			Headers: map[string]string{"x-forwarded-client-cert": "URI=spiffe://city.example/zone/" + zone + "/device/" + dev}}},
	}})
	if err != nil {
		return false, err
	}
	return resp.GetStatus().GetCode() == int32(codes.OK), nil
}

// lateSIEM is an OCSF webhook receiver that is down (503) until up is
// set, and keeps every event it accepts.
type lateSIEM struct {
	up     atomic.Bool
	mu     sync.Mutex
	events []map[string]any
	down   int
}

func (s *lateSIEM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.up.Load() {
		s.mu.Lock()
		s.down++
		s.mu.Unlock()
		http.Error(w, "SIEM down for maintenance", http.StatusServiceUnavailable)
		return
	}
	var evs []map[string]any
	if err := json.NewDecoder(r.Body).Decode(&evs); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.events = append(s.events, evs...)
	s.mu.Unlock()
}

func (s *lateSIEM) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, _ := json.Marshal(s.events)
	return string(b)
}

func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !ok() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// TestMonitorContainsAScanAcrossMembers: a sensor's scan, its requests
// spread over all three members, ends in its quarantine on every member
// and an incident with its actions; a sensor sending its usual traffic
// meanwhile is untouched; the SIEM, down during the attack, receives every
// alert once it is up; the evidence bundle verifies with `vigil audit
// verify`; an approve-mode camera waits for `vigil incident approve`.
func TestMonitorContainsAScanAcrossMembers(t *testing.T) {
	siem := &lateSIEM{}
	hs := httptest.NewServer(siem)
	defer hs.Close()
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 3, Args: []string{"--siem-webhook", hs.URL + "/ocsf"}})
	ctx := ctxFor(t, 2*time.Minute)
	if _, err := c.Client(0).ApplyTopology(ctx, []byte(monitorDoc)); err != nil {
		t.Fatal(err)
	}
	authz := authzClients(t, c)
	env := []string{"VIGIL_SERVER=" + c.Member(1).APIAddr, "VIGIL_TOKEN_FILE=" + c.TokenFile()}

	// Benign traffic all along, spread over the members.
	benignCtx, stopBenign := context.WithCancel(ctx)
	var benign sync.WaitGroup
	benign.Add(1)
	go func() {
		defer benign.Done()
		for i := 0; benignCtx.Err() == nil; i++ {
			for _, d := range []string{"sen-2", "sen-3"} {
				asGateway(benignCtx, authz[i%3], "north", "gw-1", d, "POST", "telemetry.city.example", "/t")
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	time.Sleep(time.Second)

	start := time.Now()
	for i := range 15 {
		if _, err := asGateway(ctx, authz[i%3], "north", "gw-1", "sen-1", "GET", fmt.Sprintf("10.20.0.%d", i), "/"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range authz {
		waitUntil(t, 10*time.Second, "sen-1 denied at "+c.Member(i).ID, func() bool {
			ok, err := asGateway(ctx, authz[i], "north", "gw-1", "sen-1", "POST", "telemetry.city.example", "/t")
			return err == nil && !ok
		})
		t.Logf("scan → %s denies sen-1: %v after the first scan request", c.Member(i).ID, time.Since(start))
	}
	res := mustCLI(t, env, "incident", "list", "-o", "json")
	var incs []topology.Incident
	if err := json.Unmarshal([]byte(res.stdout), &incs); err != nil {
		t.Fatalf("incident list -o json: %v\n%s", err, res)
	}
	var inc topology.Incident
	for _, i := range incs {
		if i.Subject == topology.DeviceSubject("sen-1") {
			inc = i
		}
	}
	if inc.ID == "" || inc.Status != topology.IncidentOpen || len(inc.Findings) == 0 || len(inc.Actions) == 0 || inc.Actions[0].Name != "quarantine" {
		t.Fatalf("incidents: %s", res.stdout)
	}
	// Every member shows the same incident and the quarantine.
	for i := range c.Size() {
		got, err := c.Client(i).Incident(ctx, inc.ID)
		if err != nil || got.Subject != inc.Subject {
			t.Fatalf("%s: incident %s: %v", c.Member(i).ID, inc.ID, err)
		}
		s, err := c.Client(i).Subject(ctx, topology.KindDevice, "sen-1")
		if err != nil || !s.Quarantined || s.State.Risk == nil || s.State.Risk.Score < 80 {
			t.Fatalf("%s: sen-1 %+v %v", c.Member(i).ID, s, err)
		}
	}
	// The evidence bundle, once sealed, verifies.
	waitUntil(t, 30*time.Second, "the evidence action", func() bool {
		got, err := c.Client(0).Incident(ctx, inc.ID)
		if err != nil {
			return false
		}
		for _, a := range got.Actions {
			if a.Name == "evidence" && a.Outcome == "ok" {
				return true
			}
		}
		return false
	})
	dir := t.TempDir()
	mustCLI(t, env, "incident", "export", inc.ID, "--dir", dir)
	bundle := filepath.Join(dir, inc.ID+".evidence.log")
	// With VIGIL_SERVER set, the head is also checked against the incident
	// and the seal's key against the sealing member's audit key.
	if out := mustCLI(t, env, "audit", "verify", bundle); !strings.Contains(out.stdout, "seal verifies") ||
		!strings.Contains(out.stdout, "the head is the one incident "+inc.ID+" recorded") {
		t.Fatalf("audit verify: %s", out)
	}
	raw, _ := os.ReadFile(bundle)
	for i := range c.Size() {
		if !bytes.Contains(raw, []byte(`"member":"`+c.Member(i).ID+`","source":"decision"`)) {
			t.Errorf("the bundle holds no decision of %s (the scan was spread over every member)", c.Member(i).ID)
		}
	}

	// Approve mode: a tamper signal restricts the camera and waits.
	mustCLI(t, env, "device", "get", "cam-1")
	if _, err := c.Client(2).Signal(ctx, topology.DeviceSubject("cam-1"), apiSignal("tamper")); err != nil {
		t.Fatal(err)
	}
	var camInc string
	waitUntil(t, 10*time.Second, "cam-1's incident", func() bool {
		incs, err := c.Client(0).Incidents(ctx, "awaiting")
		for _, i := range incs {
			if i.Subject == topology.DeviceSubject("cam-1") {
				camInc = i.ID
			}
		}
		return err == nil && camInc != ""
	})
	time.Sleep(500 * time.Millisecond)
	for i := range authz {
		if s, _ := c.Client(i).Subject(ctx, topology.KindDevice, "cam-1"); s == nil || s.Quarantined {
			t.Fatalf("%s: an approve-mode camera was quarantined before approval: %+v", c.Member(i).ID, s)
		}
	}
	mustCLI(t, env, "incident", "approve", camInc, "--note", "seen on site")
	for i := range authz {
		waitUntil(t, 5*time.Second, "cam-1 quarantined at "+c.Member(i).ID, func() bool {
			s, err := c.Client(i).Subject(ctx, topology.KindDevice, "cam-1")
			return err == nil && s.Quarantined
		})
	}

	stopBenign()
	benign.Wait()
	for _, d := range []string{"sen-2", "sen-3"} {
		s, err := c.Client(0).Subject(ctx, topology.KindDevice, d)
		if err != nil || s.Quarantined || s.State != nil && s.State.Risk != nil && s.State.Risk.Score > 0 {
			t.Errorf("benign %s: %+v %v", d, s, err)
		}
	}

	// The SIEM comes up: every alert held in the members' outboxes
	// arrives: both incidents (OCSF Incident Finding) and the findings.
	siem.mu.Lock()
	refused := siem.down
	siem.mu.Unlock()
	if refused == 0 {
		t.Fatal("no member tried the SIEM while it was down")
	}
	siem.up.Store(true)
	waitUntil(t, 30*time.Second, "the incidents at the SIEM", func() bool {
		txt := siem.text()
		return strings.Contains(txt, inc.ID) && strings.Contains(txt, camInc) && strings.Contains(txt, `"class_uid":2005`) &&
			strings.Contains(txt, `"class_uid":2004`) && strings.Contains(txt, "denied-burst") && strings.Contains(txt, "tamper")
	})
}

func apiSignal(name string) api.SignalRequest { return api.SignalRequest{Signal: name} }
