package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-iot/vigil/authz/authztest"
	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/internal/spiffetest"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

func runAuthz(args []string) error {
	fs := flag.NewFlagSet("authz", flag.ExitOnError)
	duration := fs.Duration("duration", 10*time.Second, "how long to send checks")
	inflight := fs.Int("inflight", 16, "requests in flight")
	conns := fs.Int("conns", 4, "gRPC connections the requests share")
	devices := fs.Int("devices", 100_000, "devices in the topology")
	distinct := fs.Int("distinct", 20_000, "distinct requests cycled through; enough that no device exceeds its rate limit (10/m) in a run")
	useTLS := fs.Bool("tls", false, "run the member with proxy TLS: each request goes over mutual TLS on a connection holding its device's gateway's SVID (one connection per gateway, as Envoy does)")
	bin, dir, err := setup(fs, args)
	defer os.RemoveAll(dir)
	if err != nil {
		return err
	}
	flags := []string{"--decision-log", filepath.Join(dir, "decisions.log")}
	var ca *spiffetest.CA
	if *useTLS {
		ca = spiffetest.NewCA(fatal{}, "city.example")
		cert, key, bundle := ca.Write(fatal{}, ca.Issue(fatal{}, "spiffe://city.example/vigil/node/n1", "127.0.0.1"), dir, "member")
		flags = append(flags, "--proxy-tls-cert", cert, "--proxy-tls-key", key, "--proxy-tls-ca", bundle)
	}
	c, err := startCluster(bin, filepath.Join(dir, "cluster"), harness.Options{Members: 1, Args: flags})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()
	// Classes without an attestation requirement: attestations are only
	// recorded from verified evidence, which this tool does not produce.
	doc := topologytest.Generate(topologytest.Spec{Zones: 10, GatewaysPerZone: 10, Devices: *devices, NoAttestation: true})
	ix, err := applyDocument(ctx, c, doc)
	if err != nil {
		return err
	}
	reqs := authztest.Requests(ix, min(*distinct, *devices), *devices)
	// clientOf[i] sends reqs[i].
	clientOf := make([]authv3.AuthorizationClient, len(reqs))
	dial := func(creds credentials.TransportCredentials) (authv3.AuthorizationClient, error) {
		cc, err := grpc.NewClient(c.Member(0).AuthzAddr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, err
		}
		return authv3.NewAuthorizationClient(cc), nil
	}
	nconns := *conns
	if *useTLS {
		byGateway := map[string]authv3.AuthorizationClient{}
		for i, r := range reqs {
			sub, _ := ix.BySPIFFEID(r.GetAttributes().GetSource().GetPrincipal())
			d, _ := ix.Device(sub.Name)
			if byGateway[d.Gateway] == nil {
				id, _ := ix.SPIFFEID(topology.GatewaySubject(d.Gateway))
				svid := ca.Issue(fatal{}, id)
				if byGateway[d.Gateway], err = dial(credentials.NewTLS(&tls.Config{
					Certificates: []tls.Certificate{svid.TLS}, RootCAs: ca.Pool, ServerName: "127.0.0.1"})); err != nil {
					return err
				}
			}
			clientOf[i] = byGateway[d.Gateway]
		}
		nconns = len(byGateway)
	} else {
		shared := make([]authv3.AuthorizationClient, *conns)
		for i := range shared {
			if shared[i], err = dial(insecure.NewCredentials()); err != nil {
				return err
			}
		}
		for i := range clientOf {
			clientOf[i] = shared[i%len(shared)]
		}
	}
	mode := "plaintext"
	if *useTLS {
		mode = "mutual TLS, one connection per gateway"
	}
	fmt.Printf("1 member on 127.0.0.1, %d devices, %d requests in flight over %d connections (%s), %v, half allowed and half denied\n",
		*devices, *inflight, nconns, mode, *duration)
	header("ext_authz Check over loopback gRPC")
	var mu sync.Mutex
	var lat latencies
	var allowed, denied, failed int
	var wg sync.WaitGroup
	cpu0, _ := procCPU(c.PID(0))
	start := time.Now()
	deadline := start.Add(*duration)
	for w := range *inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine latencies
			var a, d, f int
			for i := w; time.Now().Before(deadline); i += *inflight {
				t0 := time.Now()
				resp, err := clientOf[i%len(reqs)].Check(ctx, reqs[i%len(reqs)])
				mine = append(mine, time.Since(t0))
				switch {
				case err != nil:
					f++
				case resp.GetStatus().GetCode() == 0:
					a++
				default:
					d++
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			allowed, denied, failed = allowed+a, denied+d, failed+f
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, _ := procCPU(c.PID(0))
	fmt.Printf("checks %d in %v: %.0f checks/s (allowed %d, denied %d, errors %d)\n",
		len(lat), elapsed.Round(time.Millisecond), float64(len(lat))/elapsed.Seconds(), allowed, denied, failed)
	if len(lat) > 0 {
		fmt.Printf("member CPU %.2fs: %.0f µs per check\n", (cpu1 - cpu0).Seconds(), float64((cpu1-cpu0).Microseconds())/float64(len(lat)))
	}
	fmt.Printf("latency: %v\n", lat)
	rss, peak, _ := harness.ProcMemory(c.PID(0))
	fmt.Printf("member RSS %s (peak %s)\n", mib(rss), mib(peak))
	return nil
}

// fatal lets spiffetest stop the tool the way it stops a test.
type fatal struct{}

func (fatal) Helper() {}
func (fatal) Fatal(args ...any) {
	fmt.Fprintln(os.Stderr, append([]any{"vigil-load:"}, args...)...)
	os.Exit(1)
}
