package node

import (
	"crypto/x509"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/internal/spiffetest"
)

// TestProxyTLSReloads: rewritten files take effect on a later handshake; a
// rewrite that does not load keeps the previous files in force.
func TestProxyTLSReloads(t *testing.T) {
	dir := t.TempDir()
	ca := spiffetest.NewCA(t, "city.example")
	certFile, keyFile, caFile := ca.Write(t, ca.Issue(t, "spiffe://city.example/vigil/node/n1", "127.0.0.1"), dir, "member")
	r, err := newReloadingTLS(ProxyTLS{CertFile: certFile, KeyFile: keyFile, CAFile: caFile}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r.now = func() time.Time { return now }
	leafID := func() string {
		t.Helper()
		cfg, err := r.config(nil)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(cfg.Certificates[0].Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf.URIs[0].String()
	}
	if got := leafID(); got != "spiffe://city.example/vigil/node/n1" {
		t.Fatalf("serving %s", got)
	}
	// Rotated (a new SVID and a new CA), looked at after a second.
	ca2 := spiffetest.NewCA(t, "city.example")
	ca2.Write(t, ca2.Issue(t, "spiffe://city.example/vigil/node/n1-rotated"), dir, "member")
	if got := leafID(); got != "spiffe://city.example/vigil/node/n1" {
		t.Errorf("reloaded within a second: %s", got)
	}
	now = now.Add(proxyTLSRecheck)
	if got := leafID(); got != "spiffe://city.example/vigil/node/n1-rotated" {
		t.Errorf("after rotation serving %s", got)
	}
	cfg, _ := r.config(nil)
	if !cfg.ClientCAs.Equal(ca2.Pool) {
		t.Error("the rotated CA bundle is not in force")
	}
	// Half-written: the key does not match; the rotated pair stays.
	if err := os.WriteFile(keyFile, ca.Issue(t, "spiffe://city.example/x").KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	now = now.Add(proxyTLSRecheck)
	if got := leafID(); got != "spiffe://city.example/vigil/node/n1-rotated" {
		t.Errorf("after a bad rewrite serving %s", got)
	}
}

func TestProxyTLSRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	ca := spiffetest.NewCA(t, "city.example")
	certFile, keyFile, caFile := ca.Write(t, ca.Issue(t, "spiffe://city.example/vigil/node/n1"), dir, "member")
	empty := filepath.Join(dir, "empty.pem")
	os.WriteFile(empty, []byte("no PEM here\n"), 0o600)
	open := filepath.Join(dir, "open.key")
	data, _ := os.ReadFile(keyFile)
	os.WriteFile(open, data, 0o644)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for name, tc := range map[string]struct {
		files ProxyTLS
		want  string
	}{
		"only a certificate":    {ProxyTLS{CertFile: certFile}, "together"},
		"no CA":                 {ProxyTLS{CertFile: certFile, KeyFile: keyFile}, "together"},
		"a CA file without PEM": {ProxyTLS{CertFile: certFile, KeyFile: keyFile, CAFile: empty}, "holds no PEM certificate"},
		"a key others can read": {ProxyTLS{CertFile: certFile, KeyFile: open, CAFile: caFile}, "readable by others"},
		"a missing certificate": {ProxyTLS{CertFile: filepath.Join(dir, "nope.pem"), KeyFile: keyFile, CAFile: caFile}, "no such file"},
	} {
		if _, err := newReloadingTLS(tc.files, log); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tc.want)
		}
	}
}

func TestProxyTLSFromTheWorkloadAPI(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := newProxyCreds(ProxyTLS{CertFile: "a.pem", WorkloadSocket: "/run/spire/agent.sock"}, "n1", log); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("files and a workload socket: err = %v", err)
	}
	// No agent: the member does not start, and says why.
	_, err := newWorkloadTLS(filepath.Join(t.TempDir(), "no-agent.sock"), "n1", 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "no SVID from the SPIRE agent") {
		t.Errorf("no agent: err = %v", err)
	}
}
