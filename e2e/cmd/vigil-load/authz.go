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
	var ca *spiffetest.CA
	if *useTLS {
		ca = spiffetest.NewCA(fatal{}, "city.example")
	}
	c, ix, err := startAuthzMember(bin, dir, *devices, ca, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()
	reqs := authztest.Requests(ix, min(*distinct, *devices), *devices)
	// clientOf[i] sends reqs[i].
	conn := newAuthzConns(ix, ca, *conns)
	defer conn.Close()
	clientOf, err := conn.clients(c.Member(0).AuthzAddr, reqs)
	if err != nil {
		return err
	}
	fmt.Printf("1 member on 127.0.0.1, %d devices, %d requests in flight over %d connections (%s), %v, half allowed and half denied\n",
		*devices, *inflight, conn.count(reqs), conn.mode(), *duration)
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

// memberArgs are extra flags for the member startAuthzMember starts
// (authz-compare's -member-args and -pprof).
var memberArgs []string

// startAuthzMember starts one `vigil serve` member in dir with its decision
// log on, and with proxy TLS (a member SVID for 127.0.0.1 from ca) when ca
// is not nil, then applies a generated city of the given size (10 zones of
// 10 gateways; classes without an attestation requirement: attestations
// are only recorded from verified evidence, which these tools do not
// produce). edit, when not nil, changes the document before it is applied.
func startAuthzMember(bin, dir string, devices int, ca *spiffetest.CA, edit func(*topology.Document)) (*harness.Cluster, *topology.Index, error) {
	flags := append([]string{"--decision-log", filepath.Join(dir, "decisions.log")}, memberArgs...)
	if ca != nil {
		cert, key, bundle := ca.Write(fatal{}, ca.Issue(fatal{}, "spiffe://city.example/vigil/node/n1", "127.0.0.1"), dir, "member")
		flags = append(flags, "--proxy-tls-cert", cert, "--proxy-tls-key", key, "--proxy-tls-ca", bundle)
	}
	c, err := startCluster(bin, filepath.Join(dir, "cluster"), harness.Options{Members: 1, Args: flags})
	if err != nil {
		return nil, nil, err
	}
	doc := topologytest.Generate(topologytest.Spec{Zones: 10, GatewaysPerZone: 10, Devices: devices, NoAttestation: true})
	if edit != nil {
		edit(doc)
	}
	ix, err := applyDocument(context.Background(), c, doc)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, ix, nil
}

// authzConns opens the gRPC connections Checks go over. In plaintext,
// requests share n connections, request i the (i mod n)th. With a CA
// (proxy TLS), each request goes on a connection holding its device's
// gateway's SVID, one connection per gateway, as Envoy does, so that the
// member's caller check runs on every request. A gateway's SVID is issued
// once, so that the connections to different servers present the same
// certificates.
type authzConns struct {
	ix    *topology.Index
	ca    *spiffetest.CA
	n     int
	svids map[string]tls.Certificate // by gateway
	ccs   []*grpc.ClientConn
}

func newAuthzConns(ix *topology.Index, ca *spiffetest.CA, n int) *authzConns {
	return &authzConns{ix: ix, ca: ca, n: max(1, n), svids: map[string]tls.Certificate{}}
}

// gateway is the name of the gateway of request r's device.
func (a *authzConns) gateway(r *authv3.CheckRequest) string {
	sub, _ := a.ix.BySPIFFEID(r.GetAttributes().GetSource().GetPrincipal())
	d, _ := a.ix.Device(sub.Name)
	return d.Gateway
}

// clients opens connections to addr and returns the client of each
// request: clientOf[i] sends reqs[i].
func (a *authzConns) clients(addr string, reqs []*authv3.CheckRequest) ([]authv3.AuthorizationClient, error) {
	dial := func(creds credentials.TransportCredentials) (authv3.AuthorizationClient, error) {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, err
		}
		a.ccs = append(a.ccs, cc)
		return authv3.NewAuthorizationClient(cc), nil
	}
	clientOf := make([]authv3.AuthorizationClient, len(reqs))
	if a.ca == nil {
		shared := make([]authv3.AuthorizationClient, a.n)
		for i := range shared {
			var err error
			if shared[i], err = dial(insecure.NewCredentials()); err != nil {
				return nil, err
			}
		}
		for i := range clientOf {
			clientOf[i] = shared[i%len(shared)]
		}
		return clientOf, nil
	}
	byGateway := map[string]authv3.AuthorizationClient{}
	for i, r := range reqs {
		gw := a.gateway(r)
		if byGateway[gw] == nil {
			svid, ok := a.svids[gw]
			if !ok {
				id, _ := a.ix.SPIFFEID(topology.GatewaySubject(gw))
				svid = a.ca.Issue(fatal{}, id).TLS
				a.svids[gw] = svid
			}
			var err error
			if byGateway[gw], err = dial(credentials.NewTLS(&tls.Config{
				Certificates: []tls.Certificate{svid}, RootCAs: a.ca.Pool, ServerName: "127.0.0.1"})); err != nil {
				return nil, err
			}
		}
		clientOf[i] = byGateway[gw]
	}
	return clientOf, nil
}

// count is the number of connections clients opens to one server.
func (a *authzConns) count(reqs []*authv3.CheckRequest) int {
	if a.ca == nil {
		return a.n
	}
	gws := map[string]bool{}
	for _, r := range reqs {
		gws[a.gateway(r)] = true
	}
	return len(gws)
}

func (a *authzConns) mode() string {
	if a.ca != nil {
		return "mutual TLS, one connection per gateway"
	}
	return "plaintext"
}

// Close closes every connection opened.
func (a *authzConns) Close() {
	for _, cc := range a.ccs {
		cc.Close()
	}
}

// fatal lets spiffetest stop the tool the way it stops a test.
type fatal struct{}

func (fatal) Helper() {}
func (fatal) Fatal(args ...any) {
	fmt.Fprintln(os.Stderr, append([]any{"vigil-load:"}, args...)...)
	os.Exit(1)
}
