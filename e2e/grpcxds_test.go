package e2e_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/topology"
)

const grpcTopology = `apiVersion: vigil/v1
trustDomain: e2e.example
zones: [{name: north}, {name: south}, {name: cloud}]
gateways: [{name: gw-north-1, zone: north}, {name: gw-south-1, zone: south}]
deviceClasses: [{name: meter}]
devices:
  - {name: meter-1, class: meter, gateway: gw-north-1}
  - {name: meter-2, class: meter, gateway: gw-north-1}
  - {name: meter-9, class: meter, gateway: gw-south-1}
services:
  - {name: echo, zone: cloud, protocol: grpc, hosts: [echo.e2e.example], endpoints: ["%s"]}
flows:
%s`

const grpcFlow = `  - name: north-health
    from: {zones: [north]}
    to: {service: echo}
    http: {paths: ["/grpc.health.v1.Health/Check"]}
`

// TestProxylessGRPC: grpc-go's own xDS client and xDS-enabled server, each
// configured only by a bootstrap from `vigil grpc bootstrap`, take their
// configuration from a Vigil member. The client resolves xds:///echo...
// and calls the server over mTLS; removing the flow or quarantining the
// calling gateway makes its calls fail, and restoring them heals it. The
// server's RBAC, also from Vigil, refuses identities the topology does not
// allow (certificates made by the test). The member runs with proxy TLS:
// xDS and ext_authz are mutual TLS, a gateway holding another gateway's
// bootstrap is refused its configuration, and a gateway may ask the
// authorizer only about its own devices.
func TestProxylessGRPC(t *testing.T) {
	dir := t.TempDir()
	peer, err := harness.BuildTool(filepath.Dir(vigilBin), "vigil-grpc-peer")
	if err != nil {
		t.Fatal(err)
	}
	echoAddr, err := harness.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	ca := spiffetest.NewCA(t, "e2e.example")
	ids := map[string]string{
		"gw-north-1": "spiffe://e2e.example/zone/north/gateway/gw-north-1",
		"gw-south-1": "spiffe://e2e.example/zone/south/gateway/gw-south-1",
		"echo":       "spiffe://e2e.example/zone/cloud/service/echo",
	}
	certs := map[string]tls.Certificate{}
	for name, id := range ids {
		svid := ca.Issue(t, id, name+".e2e.example")
		ca.Write(t, svid, dir, name)
		certs[name] = svid.TLS
	}
	// The member serves xDS and ext_authz over mutual TLS: grpc-go's xDS
	// client reaches it with the node's own certificate files, and checks
	// the member's certificate against the address it dials.
	member := ca.Issue(t, "spiffe://e2e.example/vigil/node/n1", "127.0.0.1")
	memberCert, memberKey, caFile := ca.Write(t, member, dir, "member")

	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 1,
		Args: []string{"--proxy-tls-cert", memberCert, "--proxy-tls-key", memberKey, "--proxy-tls-ca", caFile}})
	withFlow := []byte(fmt.Sprintf(grpcTopology, echoAddr, grpcFlow))
	withoutFlow := []byte(strings.Replace(fmt.Sprintf(grpcTopology, echoAddr, ""), "flows:\n", "flows: []\n", 1))
	cl := c.Client(0)
	if _, err := cl.ApplyTopology(ctxFor(t, time.Minute), withFlow); err != nil {
		t.Fatal(err)
	}
	env := []string{"VIGIL_TOKEN_FILE=" + c.TokenFile(), "VIGIL_SERVER=" + c.Member(0).APIAddr}
	// bootstrap is node's, with the certificate files of holder.
	bootstrapAs := func(node, holder string) string {
		res := mustCLI(t, env, "grpc", "bootstrap", "--node", node, "--xds-server", c.Member(0).XDSAddr, "--xds-tls",
			"--cert", filepath.Join(dir, holder+".pem"), "--key", filepath.Join(dir, holder+".key"), "--ca", filepath.Join(dir, "ca.pem"), "--refresh", "1s")
		path := filepath.Join(dir, node+"."+holder+".bootstrap.json")
		if err := os.WriteFile(path, []byte(res.stdout), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	bootstrap := func(node string) string { return bootstrapAs(node, node) }
	if res := runCLI(t, env, "grpc", "bootstrap", "--node", "meter-1", "--cert", "a", "--key", "b", "--ca", "c"); res.code == 0 || !strings.Contains(res.stderr, "names no gateway or service") {
		t.Errorf("a bootstrap for a device: %s", res)
	}

	server := startPeer(t, peer, bootstrap("echo"), "server", "--addr", echoAddr)
	server.waitLine(t, 30*time.Second, func(l string) bool { return strings.Contains(l, `"serving_mode":"SERVING"`) })
	client := startPeer(t, peer, bootstrap("gw-north-1"), "client", "--target", "xds:///echo.e2e.example",
		"--xfcc", "By="+ids["gw-north-1"]+";URI=spiffe://e2e.example/zone/north/device/meter-1")
	client.waitCode(t, time.Time{}, 30*time.Second, "OK")

	// A compromised gw-south-1 naming gw-north-1 in its bootstrap is
	// refused by xDS: it resolves nothing, so it calls nothing.
	impostor := startPeer(t, peer, bootstrapAs("gw-north-1", "gw-south-1"), "client", "--target", "xds:///echo.e2e.example",
		"--xfcc", "By="+ids["gw-north-1"]+";URI=spiffe://e2e.example/zone/north/device/meter-1")
	impostor.waitCode(t, time.Time{}, 30*time.Second, "not OK")
	impostor.expectSteady(t, 3, "not OK")
	t.Logf("gw-south-1 posing as gw-north-1: %s", impostor.last())

	ctx := ctxFor(t, 3*time.Minute)
	// The flow is removed: the route, and with it the call, goes.
	t0 := time.Now()
	if _, err := cl.ApplyTopology(ctx, withoutFlow); err != nil {
		t.Fatal(err)
	}
	failed := client.waitCode(t, t0, 10*time.Second, "not OK")
	t.Logf("flow removed → first failed call after %v (%s)", failed.Sub(t0).Round(time.Millisecond), client.last())
	client.expectSteady(t, 5, "not OK")
	if _, err := cl.ApplyTopology(ctx, withFlow); err != nil {
		t.Fatal(err)
	}
	client.waitCode(t, time.Now(), 30*time.Second, "OK")

	// The calling gateway is quarantined: it reaches nothing.
	t0 = time.Now()
	if _, err := cl.Quarantine(ctx, topology.KindGateway, "gw-north-1", "e2e"); err != nil {
		t.Fatal(err)
	}
	failed = client.waitCode(t, t0, 10*time.Second, "not OK")
	t.Logf("gateway quarantined → first failed call after %v (%s)", failed.Sub(t0).Round(time.Millisecond), client.last())
	client.expectSteady(t, 5, "not OK")
	if _, err := cl.Release(ctx, topology.KindGateway, "gw-north-1"); err != nil {
		t.Fatal(err)
	}
	client.waitCode(t, time.Now(), 30*time.Second, "OK")

	// The server's RBAC, asked directly over mTLS (no xDS on this side):
	// only a gateway of the flow, naming one of its devices, on the flow's
	// path, is admitted.
	call := func(who, xfcc, method string) codes.Code {
		cert := certs[who]
		conn, err := grpc.NewClient(echoAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{cert}, RootCAs: ca.Pool, ServerName: "echo.e2e.example",
		})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if xfcc != "" {
			cctx = metadata.AppendToOutgoingContext(cctx, "x-forwarded-client-cert", "URI="+xfcc)
		}
		var resp healthpb.HealthCheckResponse
		return status.Code(conn.Invoke(cctx, method, &healthpb.HealthCheckRequest{}, &resp))
	}
	const check, watchAll = "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/List"
	meter1, meter2 := "spiffe://e2e.example/zone/north/device/meter-1", "spiffe://e2e.example/zone/north/device/meter-2"
	cases := []struct {
		name, who, xfcc, method string
		want                    codes.Code
	}{
		{"the flow's gateway for its device", "gw-north-1", meter1, check, codes.OK},
		{"a gateway the flow does not select", "gw-south-1", "spiffe://e2e.example/zone/south/device/meter-9", check, codes.PermissionDenied},
		{"a gateway naming no device", "gw-north-1", "", check, codes.PermissionDenied},
		{"a path the flow does not allow", "gw-north-1", meter1, watchAll, codes.PermissionDenied},
		{"the service calling itself", "echo", "", check, codes.PermissionDenied},
	}
	for _, tc := range cases {
		if got := call(tc.who, tc.xfcc, tc.method); got != tc.want {
			t.Errorf("%s: %s → %v, want %v", tc.name, tc.who, got, tc.want)
		}
	}
	// A quarantined device is refused even through its own gateway.
	if _, err := cl.Quarantine(ctx, topology.KindDevice, "meter-2", "e2e"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for call("gw-north-1", meter2, check) != codes.PermissionDenied {
		if time.Now().After(deadline) {
			t.Fatal("a quarantined device is still admitted by the server's RBAC after 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := call("gw-north-1", meter1, check); got != codes.OK {
		t.Errorf("meter-1, not quarantined, now gets %v", got)
	}

	// The member's ext_authz is mutual TLS too: a gateway may ask only
	// about its own devices, and a client without a certificate gets no
	// connection.
	authzAs := func(who, principal string) (*authv3.CheckResponse, error) {
		creds := &tls.Config{RootCAs: ca.Pool, ServerName: "127.0.0.1"}
		if who != "" {
			creds.Certificates = []tls.Certificate{certs[who]}
		}
		conn, err := grpc.NewClient(c.Member(0).AuthzAddr, grpc.WithTransportCredentials(credentials.NewTLS(creds)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return authv3.NewAuthorizationClient(conn).Check(cctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: principal},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "POST", Path: "/echo.Echo/Check", Host: "echo.e2e.example"}},
		}})
	}
	resp, err := authzAs("gw-south-1", meter1)
	if err != nil || resp.GetStatus().GetCode() != int32(codes.PermissionDenied) || !strings.Contains(resp.GetDeniedResponse().GetBody(), "may ask only about its own devices") {
		t.Errorf("gw-south-1 asking about meter-1: %v, %v", resp, err)
	}
	if resp, err := authzAs("gw-north-1", meter1); err != nil || strings.Contains(resp.GetDeniedResponse().GetBody(), "may ask only") {
		t.Errorf("gw-north-1 asking about its meter-1: %v, %v", resp, err)
	}
	if _, err := authzAs("", meter1); status.Code(err) != codes.Unavailable {
		t.Errorf("a client without a certificate: %v, want Unavailable (no handshake)", err)
	}
}

// grpcPeer is a running vigil-grpc-peer whose stdout lines are collected.
type grpcPeer struct {
	mu    sync.Mutex
	lines []string
	more  chan struct{} // signalled on every line
}

func startPeer(t *testing.T, bin, bootstrap string, args ...string) *grpcPeer {
	t.Helper()
	cmd := exec.Command(bin, args...)
	// grpc-go reads the bootstrap when the process starts.
	cmd.Env = append(harness.Env(), "GRPC_XDS_BOOTSTRAP="+bootstrap)
	stdin, err := cmd.StdinPipe() // closed at cleanup: the peer exits
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(bootstrap + "." + args[0] + ".stderr")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	p, err := harness.StartProcess(cmd)
	if err != nil {
		t.Fatal(err)
	}
	g := &grpcPeer{more: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			g.mu.Lock()
			g.lines = append(g.lines, sc.Text())
			g.mu.Unlock()
			select {
			case g.more <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		if _, err := p.Wait(10 * time.Second); err != nil {
			t.Errorf("grpc peer %s: %v", args[0], err)
		}
		logf.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logf.Name())
			t.Logf("grpc peer %s stderr (last 2 KiB):\n%s", args[0], tailBytes(data, 2048))
		}
	})
	return g
}

func tailBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// waitLine waits for a stdout line that satisfies ok.
func (g *grpcPeer) waitLine(t *testing.T, d time.Duration, ok func(string) bool) {
	t.Helper()
	deadline := time.After(d)
	seen := 0
	for {
		g.mu.Lock()
		lines := g.lines[seen:]
		seen = len(g.lines)
		g.mu.Unlock()
		for _, l := range lines {
			if ok(l) {
				return
			}
		}
		select {
		case <-g.more:
		case <-deadline:
			t.Fatalf("no such line from the grpc peer within %v; last: %s", d, g.last())
		}
	}
}

type callResult struct {
	T    int64  `json:"t"`
	Code string `json:"code"`
	Err  string `json:"err"`
}

// waitCode waits for a call made after since whose code is want ("OK" or
// "not OK") and returns when it was made.
func (g *grpcPeer) waitCode(t *testing.T, since time.Time, d time.Duration, want string) time.Time {
	t.Helper()
	var at time.Time
	g.waitLine(t, d, func(l string) bool {
		var r callResult
		if json.Unmarshal([]byte(l), &r) != nil || r.T < since.UnixNano() {
			return false
		}
		if (want == "OK") == (r.Code == "OK") {
			at = time.Unix(0, r.T)
			return true
		}
		return false
	})
	return at
}

// expectSteady checks that the next n calls all have code want.
func (g *grpcPeer) expectSteady(t *testing.T, n int, want string) {
	t.Helper()
	g.mu.Lock()
	start := len(g.lines)
	g.mu.Unlock()
	deadline := time.After(30 * time.Second)
	for {
		g.mu.Lock()
		lines := append([]string(nil), g.lines[start:]...)
		g.mu.Unlock()
		if len(lines) >= n {
			for _, l := range lines[:n] {
				var r callResult
				json.Unmarshal([]byte(l), &r)
				if (want == "OK") != (r.Code == "OK") {
					t.Fatalf("calls flap: want %s, got %s", want, l)
				}
			}
			return
		}
		select {
		case <-g.more:
		case <-deadline:
			t.Fatalf("fewer than %d calls in 30s", n)
		}
	}
}

func (g *grpcPeer) last() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.lines) == 0 {
		return "(nothing)"
	}
	return g.lines[len(g.lines)-1]
}
