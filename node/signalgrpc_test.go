package node

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/internal/attestrpc"
	"github.com/vigil-iot/vigil/internal/signalrpc"
	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/internal/testwait"
	"github.com/vigil-iot/vigil/topology"
)

const signalRefusedLog = "security: signal over the proxy port refused"

// signalClientAs dials addr with the SVID of id.
func signalClientAs(t *testing.T, ca *spiffetest.CA, addr, id string) (*signalrpc.Client, *grpc.ClientConn) {
	t.Helper()
	cfg := attestrpc.ClientTLS(ca.Issue(t, id).TLS, ca.Pool, "city.example")
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return signalrpc.NewClient(cc), cc
}

// TestSignalGRPCGatewaysSignalTheirOwnDevices: over the ext_authz port with
// its SVID, a gateway reports tamper for its own device, which the
// monitor's playbook quarantines (tamper is critical, 90 ≥ quarantineAt
// 80) with an incident; it may report about itself. A gateway reporting
// about another gateway's device, about a device that does not exist or
// about another gateway, and a device, are refused, with no effect;
// malformed requests are refused before anything runs. Refusals are logged
// once per caller and minute.
func TestSignalGRPCGatewaysSignalTheirOwnDevices(t *testing.T) {
	ca := spiffetest.NewCA(t, "city.example")
	n, cl, logs := runNode(t, withProxyTLS(t, ca, "n1"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(attestGRPCDoc)); err != nil {
		t.Fatal(err)
	}
	const gw1ID = "spiffe://city.example/zone/north/gateway/gw-1"
	gw1, gw1Conn := signalClientAs(t, ca, n.AuthzAddr(), gw1ID)

	// Refused: gw-1 about gw-2's device, a device that does not exist, gw-2 itself.
	for _, sub := range []topology.Subject{topology.DeviceSubject("slc-9"), topology.DeviceSubject("no-such-device"), topology.GatewaySubject("gw-2")} {
		_, err := gw1.Report(ctx, sub, api.SignalRequest{Signal: "tamper"})
		wantCode(t, "gw-1 about "+sub.String(), err, codes.PermissionDenied, "gateway gw-1 may report signals only about its own devices and itself")
	}
	gw2, _ := signalClientAs(t, ca, n.AuthzAddr(), "spiffe://city.example/zone/north/gateway/gw-2")
	_, err := gw2.Report(ctx, topology.DeviceSubject("slc-2"), api.SignalRequest{Signal: "tamper"})
	wantCode(t, "gw-2 about slc-2", err, codes.PermissionDenied, "gateway gw-2 may report signals only about its own devices and itself")
	for _, id := range []string{
		"spiffe://city.example/zone/north/device/slc-1", // the device itself
		"spiffe://city.example/zone/south/gateway/gw-1", // gw-1's name, not its identity
		"spiffe://city.example/vigil/node/n2",           // a member
	} {
		c, _ := signalClientAs(t, ca, n.AuthzAddr(), id)
		_, err := c.Report(ctx, topology.DeviceSubject("slc-1"), api.SignalRequest{Signal: "tamper"})
		wantCode(t, id, err, codes.PermissionDenied, id+" is not a gateway of this topology")
	}
	noID, _ := signalClientAs(t, ca, n.AuthzAddr(), "")
	_, err = noID.Report(ctx, topology.DeviceSubject("slc-1"), api.SignalRequest{Signal: "tamper"})
	wantCode(t, "a certificate without a SPIFFE ID", err, codes.PermissionDenied, "presented no SPIFFE ID")

	// Malformed requests.
	for _, tc := range []struct{ body, want string }{
		{`{"subject":"device/slc-1","signal":"tamper"`, "request"},
		{`{"subject":"device/slc-1","signal":"tamper","gateway":"gw-1"}`, "unknown field"},
		{`{"subject":"device/slc-1","signal":"Tamper!"}`, "signal must be a name"},
		{`{"subject":"device/slc-1","signal":"tamper","detail":"` + strings.Repeat("d", 1025) + `"}`, "detail is longer"},
		{`{"subject":"service/telemetry","signal":"tamper"}`, "subject must be"},
	} {
		err := gw1Conn.Invoke(ctx, signalrpc.ReportMethod, wrapperspb.Bytes([]byte(tc.body)), new(wrapperspb.BytesValue))
		wantCode(t, tc.body[:min(len(tc.body), 80)], err, codes.InvalidArgument, tc.want)
	}

	// Admitted: gw-1 about itself (low), and tamper for its own slc-1.
	resp, err := gw1.Report(ctx, topology.GatewaySubject("gw-1"), api.SignalRequest{Signal: "reboot", Detail: "watchdog"})
	if err != nil || !resp.Accepted || resp.Owner != "n1" {
		t.Fatalf("gw-1 about itself: %+v %v", resp, err)
	}
	resp, err = gw1.Report(ctx, topology.DeviceSubject("slc-1"), api.SignalRequest{Signal: "tamper", Detail: "enclosure opened"})
	if err != nil || !resp.Accepted || resp.Owner != "n1" {
		t.Fatalf("gw-1 about slc-1: %+v %v", resp, err)
	}
	slc1 := topology.DeviceSubject("slc-1")
	testwait.For(t, 20*time.Second, "slc-1 to be quarantined", func() bool { return n.Store().Current().Quarantined(slc1) })
	inc := incidentOf(t, cl, slc1, func(topology.Incident) bool { return true })
	if actionOutcome(inc, "quarantine") != topology.ActionOK || !strings.Contains(inc.Title, "tamper") {
		t.Fatalf("slc-1's incident: %+v", inc)
	}

	// The refused reports had no effect.
	snap := n.Store().Current()
	for _, sub := range []topology.Subject{topology.DeviceSubject("slc-9"), topology.DeviceSubject("slc-2"), topology.GatewaySubject("gw-2")} {
		if snap.Quarantined(sub) {
			t.Errorf("%s was quarantined", sub)
		}
		if st := snap.SubjectState(sub); st != nil && st.Risk != nil && st.Risk.Score > 0 {
			t.Errorf("%s has risk: %+v", sub, st.Risk)
		}
	}
	incs, err := cl.Incidents(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range incs {
		if i.Subject != slc1 {
			t.Errorf("an incident for %s: %+v", i.Subject, i)
		}
	}

	out := logs.String()
	if !strings.Contains(out, "actor="+gw1ID) {
		t.Errorf("the monitor did not record gw-1's SPIFFE ID as the actor:\n%s", out)
	}
	var gw1Refusals, refusals int
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, signalRefusedLog) {
			continue
		}
		refusals++
		if strings.Contains(line, "caller="+gw1ID+" ") {
			gw1Refusals++
			if !strings.Contains(line, "subject=device/slc-9") || !strings.Contains(line, "reason=") {
				t.Errorf("refusal log line without its subject or reason: %s", line)
			}
		}
	}
	// gw-1 was refused three times, logged once; gw-2, three strangers and
	// the certificate without an ID once each.
	if gw1Refusals != 1 || refusals != 6 {
		t.Errorf("refusals logged: %d of gw-1 (want 1), %d in all (want 6):\n%s", gw1Refusals, refusals, out)
	}
}

// TestSignalGRPCNeedsProxyTLS: a member that does not authenticate its
// proxies refuses the service outright, and says so once.
func TestSignalGRPCNeedsProxyTLS(t *testing.T) {
	n, cl, logs := runNode(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(attestGRPCDoc)); err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(n.AuthzAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := signalrpc.NewClient(cc)
	for range 3 {
		_, err = c.Report(ctx, topology.DeviceSubject("slc-1"), api.SignalRequest{Signal: "tamper"})
		wantCode(t, "a signal without proxy TLS", err, codes.FailedPrecondition, "signals over the proxy port need --proxy-tls-*")
	}
	if got := strings.Count(logs.String(), signalRefusedLog); got != 1 {
		t.Errorf("the refusal was logged %d times, want once:\n%s", got, logs)
	}
	time.Sleep(200 * time.Millisecond)
	if n.Store().Current().Quarantined(topology.DeviceSubject("slc-1")) || strings.Contains(logs.String(), "monitor: signal") {
		t.Error("a refused signal reached the monitor")
	}
}

// TestSignalGRPCMonitorOff: with proxy TLS but no monitor, an admitted
// gateway is told the monitor is off.
func TestSignalGRPCMonitorOff(t *testing.T) {
	ca := spiffetest.NewCA(t, "city.example")
	tls := withProxyTLS(t, ca, "n1")
	n, cl, _ := runNode(t, func(c *Config) { tls(c); c.Monitor.Off = true })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cl.ApplyTopology(ctx, []byte(attestGRPCDoc)); err != nil {
		t.Fatal(err)
	}
	gw1, _ := signalClientAs(t, ca, n.AuthzAddr(), "spiffe://city.example/zone/north/gateway/gw-1")
	_, err := gw1.Report(ctx, topology.DeviceSubject("slc-1"), api.SignalRequest{Signal: "tamper"})
	wantCode(t, "a signal with the monitor off", err, codes.FailedPrecondition, "the monitor is off on this member")
	_, err = gw1.Report(ctx, topology.DeviceSubject("slc-9"), api.SignalRequest{Signal: "tamper"})
	wantCode(t, "gw-1 about slc-9 with the monitor off", err, codes.PermissionDenied, "only about its own devices")
}
