package node

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/spire/spiretest"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"

	"github.com/vigil-iot/vigil/internal/testwait"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runNode starts a one-member cluster on loopback and waits until it is
// ready; it stops when the test ends.
func runNode(t testing.TB, mutate func(*Config)) (*Node, *api.Client, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir = "n1", filepath.Join(t.TempDir(), "data")
	cfg.APIAddr, cfg.RaftAddr, cfg.Authz.Addr, cfg.XDS.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	if mutate != nil {
		mutate(&cfg)
	}
	n, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("member log:\n%s", logs.String())
		}
	})
	tokens, _ := os.ReadFile(n.TokenFile())
	tok, _ := api.FirstToken(tokens)
	testwait.For(t, 10*time.Second, "the member to be ready", n.Ready)
	return n, api.NewClient(n.APIAddr(), tok), logs
}

func TestSPIREIsOffWithoutASocket(t *testing.T) {
	_, cl, logs := runNode(t, nil)
	ctx := context.Background()
	if !strings.Contains(logs.String(), "SPIRE integration is off") {
		t.Errorf("the member did not say SPIRE integration is off:\n%s", logs)
	}
	var apiErr *api.Error
	if _, err := cl.SPIREStatus(ctx); !errors.As(err, &apiErr) || apiErr.Status != http.StatusNotFound ||
		!strings.Contains(apiErr.Message, "SPIRE integration is off on member n1") {
		t.Errorf("spire status: %v", err)
	}
	if err := cl.JoinToken(ctx, topology.KindGateway, "gw-1", 0, nil); !errors.As(err, &apiErr) || apiErr.Status != http.StatusNotFound {
		t.Errorf("join token: %v", err)
	}
}

// TestSPIREMember runs a member against the real spire-server: the
// topology it commits becomes entries, a join token comes through the API,
// and a quarantine deletes a device's entry.
func TestSPIREMember(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping a test against the real spire-server")
	}
	if _, err := spiretest.Binaries(); err != nil {
		t.Skipf("real SPIRE is not available (scripts/spire-build.sh could not provide it): %v", err)
	}
	srv, err := spiretest.StartServer("", "city.example")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	sc, err := spire.Dial(srv.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()

	n, cl, _ := runNode(t, func(c *Config) { c.SPIRE.Socket, c.SPIRE.Options = srv.Socket, spire.DefaultOptions() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ix, err := topology.NewIndex(topologytest.Generate(topologytest.Spec{Zones: 1, GatewaysPerZone: 2, Devices: 10, NoAttestation: true}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Store().ReplaceDocument(ctx, ix); err != nil {
		t.Fatal(err)
	}
	entries := func() int {
		list, err := sc.ListEntries(ctx, "vigil", "")
		if err != nil {
			t.Fatal(err)
		}
		return len(list)
	}
	testwait.For(t, 10*time.Second, "14 entries (10 devices, 4 services)", func() bool { return entries() == 14 })

	var tok spire.Token
	if err := cl.JoinToken(ctx, topology.KindGateway, "gw-00001", 10*time.Minute, &tok); err != nil {
		t.Fatal(err)
	}
	if tok.Token == "" || tok.SPIFFEID != "spiffe://city.example/zone/z-000/gateway/gw-00001" || time.Until(tok.ExpiresAt) > 11*time.Minute {
		t.Errorf("token: %+v", tok)
	}
	var agents []spire.SubjectAgents
	if err := cl.SPIREAgents(ctx, topology.KindGateway, &agents); err != nil {
		t.Fatal(err)
	}
	if len(agents) != 2 || len(agents[1].Agents) != 1 || agents[1].Agents[0].Attested {
		t.Errorf("gateway agents: %+v", agents)
	}

	if _, err := cl.Quarantine(ctx, topology.KindDevice, "d-0000003", "test"); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, 10*time.Second, "the quarantined device's entry to go", func() bool {
		_, found, err := sc.GetEntry(ctx, "vigil.device.d-0000003")
		return err == nil && !found
	})
	st, err := cl.SPIREStatus(ctx)
	if err != nil || st["spire"].(map[string]any)["leader"] != true {
		t.Errorf("spire status: %v, %v", st, err)
	}
}
