package e2e_test

import (
	"strings"
	"testing"
	"time"
)

// TestXDSThroughAMember: a member serves each gateway's translation, a
// deny-all configuration to an unknown node, and the bootstrap that points
// a gateway's Envoy at it.
func TestXDSThroughAMember(t *testing.T) {
	c := startCluster(t, 1)
	_, doc := smartCity(t)
	if _, err := c.Client(0).ApplyTopology(ctxFor(t, time.Minute), doc); err != nil {
		t.Fatal(err)
	}
	env := []string{"VIGIL_TOKEN_FILE=" + c.TokenFile(), "VIGIL_SERVER=" + c.Member(0).APIAddr}
	dump := mustCLI(t, env, "xds", "dump", "--node", "gw-north-1")
	for _, want := range []string{"vigil-gateway-routes", "svc-telemetry", "vigil.service: telemetry", "spiffe://city.example/zone/north/gateway/gw-north-1"} {
		if !strings.Contains(dump.stdout, want) {
			t.Errorf("xds dump of gw-north-1 lacks %q", want)
		}
	}
	if strings.Contains(dump.stdout, "gw-south-1") {
		t.Error("gw-north-1's configuration mentions another zone's gateway")
	}
	unknown := mustCLI(t, env, "xds", "dump", "--node", "nobody")
	if !strings.Contains(unknown.stdout, "vigil-deny-all") || strings.Contains(unknown.stdout, "svc-") {
		t.Errorf("an unknown node's dump is not deny-all:\n%s", unknown.stdout)
	}
	boot := mustCLI(t, env, "envoy", "bootstrap", "--node", "gw-north-1", "--xds-server", c.Member(0).XDSAddr)
	for _, want := range []string{"id: gw-north-1", "cluster: north", "vigil_xds", "spire_agent", strings.Split(c.Member(0).XDSAddr, ":")[1]} {
		if !strings.Contains(boot.stdout, want) {
			t.Errorf("bootstrap lacks %q:\n%s", want, boot.stdout)
		}
	}
	// Over mutual TLS: the node presents its own SVID and accepts members only.
	for args, id := range map[string]string{
		"--node gw-north-1":               "spiffe://city.example/zone/north/gateway/gw-north-1",
		"--node edge-1 --edge-zone cloud": "spiffe://city.example/zone/cloud/edge/edge-1",
	} {
		tls := mustCLI(t, env, append(append([]string{"envoy", "bootstrap"}, strings.Fields(args)...), "--xds-tls")...)
		for _, want := range []string{"name: " + id, "prefix: spiffe://city.example/vigil/node/", "envoy.transport_sockets.tls"} {
			if !strings.Contains(tls.stdout, want) {
				t.Errorf("bootstrap %s --xds-tls lacks %q:\n%s", args, want, tls.stdout)
			}
		}
	}
	if res := runCLI(t, env, "envoy", "bootstrap", "--node", "gw-nowhere"); res.code == 0 {
		t.Errorf("a bootstrap for a gateway that does not exist was printed:\n%s", res)
	}
	// Dumps do not connect a proxy, so none is listed.
	status := mustCLI(t, env, "proxy", "status")
	if !strings.Contains(status.stdout, "no proxy has connected to member n1") {
		t.Errorf("proxy status: %s", status)
	}
}
