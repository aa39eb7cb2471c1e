package e2e_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/topology"
)

// The clock-skew test's topology: sensors that need no attestation, and
// meters that must present a TPM 2.0 quote younger than skewMaxAge, which
// is shorter than the skew, so that the skewed member's judgement of an
// attestation differs from the others'.
const (
	skewMaxAge   = time.Hour
	skewFirmware = "4.0.0"
	skewTopology = `apiVersion: vigil/v1
trustDomain: city.example
zones:
  - name: north
  - name: cloud
gateways:
  - {name: gw-1, zone: north}
deviceClasses:
  - name: sensor
  - name: meter
    attestation:
      maxAge: 1h
      formats: [tpm2-quote]
      pcrs: [16]
      firmware:
        - {version: "` + skewFirmware + `", sha256: "%s"}
devices:
  - {name: s-1, class: sensor, gateway: gw-1}
  - {name: s-2, class: sensor, gateway: gw-1}
  - {name: m-1, class: meter, gateway: gw-1}
  - {name: m-2, class: meter, gateway: gw-1}
  - {name: m-3, class: meter, gateway: gw-1}
  - {name: m-4, class: meter, gateway: gw-1}
services:
  - {name: telemetry, zone: cloud, protocol: http, hosts: [telemetry.city.example], endpoints: ["10.0.0.1:8443"]}
flows:
  - {name: t, from: {classes: [sensor, meter]}, to: {service: telemetry}, http: {methods: [POST], paths: ["/t"]}}
`
)

// member is a `vigil serve` this test runs itself: the harness gives
// every member the same flags, and the skewed member must found the
// cluster, so that it leads and its clock goes into the log.
type member struct {
	id, dataDir, apiAddr, authzAddr, logPath string
	args                                     []string
	proc                                     *harness.Process
}

// startMember starts member id, founding a cluster when join is nil and
// else joining join's, with extra flags; it waits for the member's
// /healthz and kills it when the test ends.
func startMember(t *testing.T, dir, id string, join *member, extra ...string) *member {
	t.Helper()
	addr := func() string {
		a, err := harness.FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	m := &member{id: id, dataDir: filepath.Join(dir, id), apiAddr: addr(), authzAddr: addr(), logPath: filepath.Join(dir, id+".log")}
	m.args = []string{"serve", "--node-id", id, "--data-dir", m.dataDir,
		"--api-addr", m.apiAddr, "--raft-addr", addr(), "--authz-addr", m.authzAddr, "--xds-addr", addr(), "--log-level", "info"}
	if join != nil {
		m.args = append(m.args, "--join", join.apiAddr, "--cluster-key-file", filepath.Join(join.dataDir, "cluster.key"),
			"--token-file", join.tokenFile())
	}
	m.args = append(m.args, extra...)
	m.start(t)
	t.Cleanup(func() {
		m.proc.Kill()
		if t.Failed() {
			data, _ := os.ReadFile(m.logPath)
			lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
			t.Logf("----- last lines of %s (%s) -----\n%s", id, m.logPath, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	return m
}

func (m *member) tokenFile() string { return filepath.Join(m.dataDir, "api-tokens") }

// start runs the member's process (again) and waits for its /healthz.
func (m *member) start(t *testing.T) {
	t.Helper()
	log, err := os.OpenFile(m.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(vigilBin, m.args...)
	cmd.Env = harness.Env()
	cmd.Stdout, cmd.Stderr = log, log
	if m.proc, err = harness.StartProcess(cmd); err != nil {
		t.Fatal(err)
	}
	go func() { <-m.proc.Done(); log.Close() }()
	cl := api.NewClient(m.apiAddr, "")
	testwait.For(t, 30*time.Second, m.id+"'s /healthz", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return cl.Health(ctx) == nil
	})
}

// denial is an ext_authz answer: allowed, or denied and why.
type denial struct {
	allowed bool
	reason  string
}

func (d denial) String() string {
	if d.allowed {
		return "allowed"
	}
	return "denied (" + d.reason + ")"
}

// checkAs asks cl what gw-1's Envoy would ask for device dev posting
// telemetry.
func checkAs(t *testing.T, cl authv3.AuthorizationClient, dev string) denial {
	t.Helper()
	return checkAsIn(t, cl, "north", "gw-1", dev, "telemetry.city.example", "/t")
}

// checkAsIn asks cl what gateway gw's Envoy in zone would ask for its
// device dev posting to host and path.
func checkAsIn(t *testing.T, cl authv3.AuthorizationClient, zone, gw, dev, host, path string) denial {
	t.Helper()
	resp, err := cl.Check(ctxFor(t, 5*time.Second), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: "spiffe://city.example/zone/" + zone + "/gateway/" + gw},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "POST", Path: path, Host: host, Size: 10,
			Headers: map[string]string{"x-forwarded-client-cert": "URI=spiffe://city.example/zone/" + zone + "/device/" + dev}}},
	}})
	if err != nil {
		t.Fatalf("Check for %s: %v", dev, err)
	}
	if resp.GetStatus().GetCode() == int32(codes.OK) {
		return denial{allowed: true}
	}
	var body struct {
		Reason string `json:"reason"`
	}
	json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body)
	return denial{reason: body.Reason}
}

// TestClockSkew runs three members, one of them (n3) with its wall clock
// two hours ahead (--debug-clock-offset=2h), and shows what holds:
//
//   - the replicated state is the same on every member, whatever the clock
//     of the member a write went through: the state machine reads no
//     clock, the times are in the log entries;
//   - a quarantine through the skewed member is enforced by every member;
//   - attestation fails closed on the skewed member: it judges an
//     attestation verified by the others older than the class's maxAge,
//     and a nonce another member issued expired;
//   - an attestation the skewed member verified carries its clock (verified
//     two hours in the future); the other members deny it rather than let
//     it live two hours past maxAge;
//   - a nonce stays single-use across the cluster: the skewed member's
//     results do not make the log forget nonces the others still accept.
func TestClockSkew(t *testing.T) {
	const skew = 2 * time.Hour
	dir := t.TempDir()
	// n3 founds the cluster with its clock two hours ahead, and so leads
	// until the test moves the leadership away.
	n3 := startMember(t, dir, "n3", nil, "--debug-clock-offset", skew.String())
	n1 := startMember(t, dir, "n1", n3)
	n2 := startMember(t, dir, "n2", n3)
	members := []*member{n1, n2, n3}
	names := []string{"n1", "n2", "n3"}
	data, err := os.ReadFile(n3.tokenFile())
	if err != nil {
		t.Fatal(err)
	}
	token, err := api.FirstToken(data)
	if err != nil {
		t.Fatal(err)
	}
	clients := make([]*api.Client, 3)
	authz := make([]authv3.AuthorizationClient, 3)
	for i, m := range members {
		clients[i] = api.NewClient(m.apiAddr, token)
		cc, err := grpc.NewClient(m.authzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		authz[i] = authv3.NewAuthorizationClient(cc)
	}
	leader := func() string {
		t.Helper()
		var id string
		testwait.For(t, 30*time.Second, "three registered voters, ready, that agree on a leader", func() bool {
			id = ""
			for _, cl := range clients {
				st, err := cl.ClusterStatus(ctxFor(t, 3*time.Second))
				if err != nil || len(st.Members) != 3 || st.LeaderID == "" || id != "" && st.LeaderID != id {
					return false
				}
				for _, m := range st.Members {
					if !m.Voter || m.APIAddr == "" {
						return false
					}
				}
				if self, err := cl.Node(ctxFor(t, 3*time.Second)); err != nil || self["ready"] != true {
					return false
				}
				id = st.LeaderID
			}
			return true
		})
		return id
	}
	if l := leader(); l != "n3" {
		t.Fatalf("%s leads; want n3, the founding member", l)
	}
	if data, _ := os.ReadFile(n3.logPath); !strings.Contains(string(data), "wall clock is shifted") {
		t.Errorf("n3 does not say its clock is shifted; its log:\n%s", data)
	}

	// Every write goes through the skewed member (forwarded to the leader,
	// whichever it is).
	tpms := map[string]*attest.SimTPM{}
	fw := attestSHA("meter firmware " + skewFirmware)
	rev, err := clients[2].ApplyTopology(ctxFor(t, 30*time.Second), []byte(fmt.Sprintf(skewTopology, fw)))
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, names, clients, rev) // and every member has applied it
	for _, d := range []string{"m-1", "m-2", "m-3", "m-4"} {
		tpm, err := attest.NewSimTPM(false)
		if err != nil {
			t.Fatal(err)
		}
		if err := tpm.MeasureFirmware(fw); err != nil {
			t.Fatal(err)
		}
		ak, err := tpm.AKPublicPEM()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := clients[2].Enroll(ctxFor(t, 10*time.Second), d, api.EnrollRequest{TPMAK: string(ak)}); err != nil {
			t.Fatalf("enroll %s through n3: %v", d, err)
		}
		tpms[d] = tpm
	}

	// A quarantine through the skewed member: the same state everywhere
	// (its time is n3's clock), enforced by every member's authorizer.
	before := time.Now()
	q, err := clients[2].Quarantine(ctxFor(t, 10*time.Second), topology.KindDevice, "s-1", "clock skew e2e")
	if err != nil {
		t.Fatal(err)
	}
	rev = max(rev, q.Revision)
	sameState(t, names, clients, rev, "s-1", "s-2", "m-1")
	if since := q.State.Quarantine.Since; since.Sub(before) < skew-time.Minute || since.Sub(before) > skew+time.Minute {
		t.Errorf("quarantine since %v, %v after the request; want about %v (n3's clock)", since, since.Sub(before), skew)
	}
	for i, cl := range authz {
		if d := checkAs(t, cl, "s-1"); d.allowed || !strings.Contains(d.reason, "quarantine") {
			t.Errorf("%s: quarantined s-1 is %v; want denied as quarantined", names[i], d)
		}
		if d := checkAs(t, cl, "s-2"); !d.allowed {
			t.Errorf("%s: s-2 (not quarantined) is %v", names[i], d)
		}
	}

	attestVia := func(dev string, challenger, verifier int) ([]byte, api.AttestResponse, error) {
		t.Helper()
		ch, err := clients[challenger].Challenge(ctxFor(t, 10*time.Second), dev)
		if err != nil {
			t.Fatalf("challenge for %s at %s: %v", dev, names[challenger], err)
		}
		nonce, _ := hex.DecodeString(ch.Nonce)
		ev, err := tpms[dev].Evidence(nonce, []int{16})
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(ev)
		resp, err := clients[verifier].Attest(ctxFor(t, 10*time.Second), dev, raw)
		return raw, resp, err
	}
	mustPass := func(dev string, resp api.AttestResponse, err error, via string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s through %s: %v", dev, via, err)
		}
		if resp.Attestation == nil || resp.Attestation.Failed() {
			t.Fatalf("%s through %s: %+v", dev, via, resp.Attestation)
		}
		rev = max(rev, resp.Revision)
	}

	// m-1 attests at n1 with n1's nonce. n3 judges it by its own clock:
	// two hours old, past maxAge (1h), so it denies early; never the
	// other way round.
	m1Challenged := time.Now()
	m1Evidence, resp, err := attestVia("m-1", 0, 0)
	mustPass("m-1", resp, err, "n1")
	sameState(t, names, clients, rev, "m-1")
	for i, cl := range authz {
		d := checkAs(t, cl, "m-1")
		switch {
		case i < 2 && !d.allowed:
			t.Errorf("%s: m-1, attested a moment ago, is %v", names[i], d)
		case i == 2 && (d.allowed || !strings.Contains(d.reason, "expired")):
			t.Errorf("n3 (2h ahead): m-1, verified 2h ago by its clock, maxAge 1h, is %v; want denied as expired", d)
		}
		t.Logf("m-1 verified by n1: %s says %v", names[i], d)
	}

	// A nonce n1 issued has expired by n3's clock: the evidence is refused.
	_, _, err = attestVia("m-2", 0, 2)
	if e := (*api.Error)(nil); !errors.As(err, &e) || e.Status != 400 || !strings.Contains(e.Message, "expired") {
		t.Errorf("evidence for n1's nonce at n3: %v; want 400, nonce expired", err)
	} else {
		t.Logf("n1's nonce answered at n3: %v", err)
	}

	// m-3 attests at n3 with n3's nonce: verified "two hours from now".
	// n3 allows it; n1 and n2 refuse an attestation verified in their
	// future rather than count its age from there (which would let it
	// live until maxAge plus the skew).
	_, resp, err = attestVia("m-3", 2, 2)
	mustPass("m-3", resp, err, "n3")
	if ahead := time.Until(resp.Attestation.VerifiedAt); ahead < skew-time.Minute {
		t.Errorf("m-3 verified by n3 at %v, %v from now; want about %v (n3's clock)", resp.Attestation.VerifiedAt, ahead, skew)
	}
	sameState(t, names, clients, rev, "m-3")
	for i, cl := range authz {
		d := checkAs(t, cl, "m-3")
		switch {
		case i == 2 && !d.allowed:
			t.Errorf("n3: m-3, which it verified a moment ago, is %v", d)
		case i < 2 && (d.allowed || !strings.Contains(d.reason, "ahead of this member's clock")):
			t.Errorf("%s: m-3, verified 2h in its future, is %v; want denied as verified ahead of its clock", names[i], d)
		}
		t.Logf("m-3 verified by n3: %s says %v", names[i], d)
	}

	// The replay n3's results could open: m-1's evidence (n1's nonce, still
	// valid by n1's clock for a minute) sent again to n1, after n3 recorded
	// a result timed two hours ahead. The log must still know the nonce.
	if _, err := clients[0].Attest(ctxFor(t, 10*time.Second), "m-1", m1Evidence); err == nil {
		t.Errorf("m-1's evidence replayed at n1 after n3 recorded m-3: accepted; a nonce must be used once")
	} else if e := (*api.Error)(nil); !errors.As(err, &e) || e.Status != 409 && e.Status != 422 {
		t.Errorf("m-1's evidence replayed at n1: %v; want it refused as a replay (409) or by the log (422)", err)
	} else {
		t.Logf("m-1's evidence replayed at n1 after n3's result: %v", err)
	}

	// A nonce n3 issued is valid at n1 until n3's clock says it expires
	// (two hours longer); it is still used once.
	m4Evidence, resp, err := attestVia("m-4", 2, 0)
	mustPass("m-4", resp, err, "n1 (n3's nonce)")
	if _, err := clients[1].Attest(ctxFor(t, 10*time.Second), "m-4", m4Evidence); err == nil {
		t.Errorf("m-4's evidence (n3's nonce) replayed at n2: accepted")
	}

	// A nonce n1 issues now is still accepted: what n3's results made the
	// log forget expired before it (nonces expire on whole seconds: one
	// issued in the same second as m-1's would expire with it, and be
	// refused as possibly forgotten).
	time.Sleep(time.Until(m1Challenged.Truncate(time.Second).Add(1100 * time.Millisecond)))
	_, resp, err = attestVia("m-2", 0, 0)
	mustPass("m-2", resp, err, "n1")
	sameState(t, names, clients, rev, "s-1", "s-2", "m-1", "m-2", "m-3", "m-4")

	// n3 hands the leadership over (a graceful stop) and comes back as a
	// follower: a write through it now takes the leader's clock, which
	// stamps who and when of every write it applies.
	if code, err := n3.proc.Stop(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("stop n3: exit %d, %v", code, err)
	}
	n3.start(t)
	if l := leader(); l == "n3" {
		t.Fatal("n3 still leads after its graceful stop")
	}
	before = time.Now()
	q, err = clients[2].Quarantine(ctxFor(t, 10*time.Second), topology.KindDevice, "s-2", "clock skew e2e, through a follower")
	if err != nil {
		t.Fatal(err)
	}
	rev = max(rev, q.Revision)
	if since := q.State.Quarantine.Since; since.Sub(before).Abs() > time.Minute {
		t.Errorf("quarantine through follower n3 since %v, %v from the request; want the leader's clock", since, since.Sub(before))
	}
	sameState(t, names, clients, rev, "s-1", "s-2") // applied everywhere
	for i, cl := range authz {
		for _, dev := range []string{"s-1", "s-2"} {
			if d := checkAs(t, cl, dev); d.allowed || !strings.Contains(d.reason, "quarantine") {
				t.Errorf("%s: quarantined %s is %v; want denied as quarantined", names[i], dev, d)
			}
		}
	}
	// After all that, the replicated state is still the same everywhere.
	sameState(t, names, clients, rev, "s-1", "s-2", "m-1", "m-2", "m-3", "m-4")
}

// sameState asserts that every member, once it has applied rev, holds the
// same document revision and the same state of each device, read at the
// same revision (other writes, such as the monitor's, may land meanwhile:
// it reads again at the latest).
func sameState(t *testing.T, names []string, clients []*api.Client, rev topology.Revision, devices ...string) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		views := make([][]string, len(clients))
		at := make([]topology.Revision, len(clients))
		for i, cl := range clients {
			cl.MinRevision = rev
			top, err := cl.Topology(ctxFor(t, 15*time.Second))
			if err != nil {
				t.Fatalf("%s: topology at revision %d: %v", names[i], rev, err)
			}
			at[i] = top.Revision
			views[i] = []string{fmt.Sprintf("document revision %d", top.DocumentRevision)}
			for _, d := range devices {
				s, err := cl.Subject(ctxFor(t, 15*time.Second), topology.KindDevice, d)
				if err != nil {
					t.Fatalf("%s: device %s: %v", names[i], d, err)
				}
				st, _ := json.Marshal(s.State)
				views[i] = append(views[i], d+": "+string(st))
				at[i] = max(at[i], s.Revision)
			}
			cl.MinRevision = 0
		}
		if slices.Max(at) != slices.Min(at) && attempt < 20 {
			rev = slices.Max(at)
			continue
		}
		for i := 1; i < len(clients); i++ {
			for j := range views[i] {
				if views[i][j] != views[0][j] {
					t.Errorf("%s differs from %s (revisions %v):\n  %s\n  %s", names[i], names[0], at, views[i][j], views[0][j])
				}
			}
		}
		return
	}
}
