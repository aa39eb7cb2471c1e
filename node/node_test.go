package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/api"
)

func TestSecretsMustBePrivate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster.key")
	if err := GenerateClusterKey(path); err != nil {
		t.Fatal(err)
	}
	if _, err := loadClusterKey(path, false); err != nil {
		t.Fatalf("a fresh key does not load: %v", err)
	}
	os.Chmod(path, 0o644)
	if _, err := loadClusterKey(path, false); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable key loaded, err = %v", err)
	}
}

func TestClusterKeyProblems(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "none.key")
	if _, err := loadClusterKey(missing, false); err == nil || !strings.Contains(err.Error(), "joining member needs the key") {
		t.Errorf("missing key for a joiner: err = %v", err)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("a joining member created a cluster key of its own")
	}
	for name, content := range map[string]string{"short": "c2hvcnQ\n", "not base64": "!!!!\n"} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		os.WriteFile(p, []byte(content), 0o600)
		if _, err := loadClusterKey(p, false); err == nil {
			t.Errorf("%s key loaded", name)
		}
	}
	created := filepath.Join(dir, "new.key")
	key, err := loadClusterKey(created, true)
	if err != nil || len(key) < 32 {
		t.Fatalf("founding member's key: %d bytes, %v", len(key), err)
	}
	info, _ := os.Stat(created)
	if info.Mode().Perm() != 0o600 {
		t.Errorf("created key has mode %#o", info.Mode().Perm())
	}
}

func TestDataDirIsPinnedToItsMember(t *testing.T) {
	dir := t.TempDir()
	if err := checkNodeID(dir, "n1"); err != nil {
		t.Fatal(err)
	}
	if err := checkNodeID(dir, "n1"); err != nil {
		t.Fatalf("same member again: %v", err)
	}
	if err := checkNodeID(dir, "n2"); err == nil || !strings.Contains(err.Error(), `belongs to member "n1"`) {
		t.Fatalf("another member on the same data dir: err = %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"no id":         func(c *Config) { c.ID = "" },
		"bad id":        func(c *Config) { c.ID = "N 1" },
		"no data dir":   func(c *Config) { c.DataDir = "" },
		"bad raft addr": func(c *Config) { c.RaftAddr = "nowhere" },
		"bad api addr":  func(c *Config) { c.APIAddr = ":::" },
	} {
		c := DefaultConfig()
		c.ID = "n1"
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: config accepted", name)
		}
	}
}

func TestJoiningWithoutTheClusterKeyFailsBeforeListening(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir, cfg.Join = "n2", t.TempDir(), "127.0.0.1:1"
	cfg.APIAddr, cfg.RaftAddr = "127.0.0.1:0", "127.0.0.1:0"
	if _, err := Start(cfg); err == nil || !strings.Contains(err.Error(), "cluster key") {
		t.Fatalf("err = %v", err)
	}
}

func TestAMemberServesItsAPIOverTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	writeSelfSigned(t, certFile, keyFile)
	n, _, _ := runNode(t, func(cfg *Config) {
		cfg.APITLSCert, cfg.APITLSKey, cfg.APICAFile = certFile, keyFile, certFile
	})
	if !strings.HasPrefix(n.APIAddr(), "https://127.0.0.1:") {
		t.Fatalf("advertised API address %q is not https", n.APIAddr())
	}
	tokens, _ := os.ReadFile(n.TokenFile())
	tok, _ := api.FirstToken(tokens)
	pem, _ := os.ReadFile(certFile)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	cl := api.NewConnector(&tls.Config{RootCAs: roots}).Client(n.APIAddr(), tok)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := cl.Self(context.Background())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("https API: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := api.NewClient(n.APIAddr(), tok).Health(context.Background()); err == nil {
		t.Fatal("a client that does not trust the member's certificate got an answer")
	}
}

func writeSelfSigned(t *testing.T, certFile, keyFile string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vigil test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(priv)
	os.WriteFile(certFile, pemEncode("CERTIFICATE", der), 0o600)
	os.WriteFile(keyFile, pemEncode("EC PRIVATE KEY", keyDER), 0o600)
}

func pemEncode(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

// TestPolicyEngine: the default policy is decided by its Go form unless
// --policy-engine=rego; GET /v1/node says which; anything else is refused.
func TestPolicyEngine(t *testing.T) {
	for engine, want := range map[string]string{"": "go", "go": "go", "rego": "rego"} {
		_, cl, _ := runNode(t, func(cfg *Config) { cfg.Authz.PolicyEngine = engine })
		info, err := cl.Node(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		pol := info["parts"].(map[string]any)["authz"].(map[string]any)["policy"].(map[string]any)
		if pol["engine"] != want {
			t.Errorf("--policy-engine=%q: GET /v1/node says engine %v, want %s", engine, pol["engine"], want)
		}
	}
	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir = "n1", t.TempDir()
	cfg.APIAddr, cfg.RaftAddr, cfg.Authz.Addr, cfg.XDS.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Authz.PolicyEngine = "lua"
	if _, err := Start(cfg); err == nil || !strings.Contains(err.Error(), "policy-engine") {
		t.Fatalf("--policy-engine=lua: err = %v", err)
	}
}
