// Command vigil-grpc-peer is a proxyless gRPC program configured only by its
// xDS bootstrap (GRPC_XDS_BOOTSTRAP): the e2e tests run it as a real xDS
// data-plane peer of Vigil.
//
//	vigil-grpc-peer server --addr 127.0.0.1:PORT [--for 2m]
//	vigil-grpc-peer client --target xds:///HOST [--xfcc VALUE] [--every 50ms] [--for 2m]
//
// The server is an xDS-enabled gRPC server (grpc/xds.NewGRPCServer) serving
// the gRPC health service; it takes its listener, TLS and RBAC from Vigil.
// The client calls grpc.health.v1.Health/Check through xds:/// resolution
// and prints one JSON line per call: {"t": unix nanoseconds, "code": "OK"
// or a gRPC code, "err": message}. Both exit on their own after --for, or
// when stdin closes.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: vigil-grpc-peer server|client [flags]")
		os.Exit(2)
	}
	if os.Getenv("GRPC_XDS_BOOTSTRAP") == "" && os.Getenv("GRPC_XDS_BOOTSTRAP_CONFIG") == "" {
		fmt.Fprintln(os.Stderr, "vigil-grpc-peer: GRPC_XDS_BOOTSTRAP must name the bootstrap before the program starts")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = serve(os.Args[2:])
	case "client":
		err = call(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vigil-grpc-peer:", err)
		os.Exit(1)
	}
}

// failClosed is what xDS credentials fall back to when the control plane
// sends no security configuration: TLS that trusts nothing, so that a
// missing config never means plaintext.
func failClosed(server bool) credentials.TransportCredentials {
	if server {
		return credentials.NewTLS(&tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: x509.NewCertPool()})
	}
	return credentials.NewTLS(&tls.Config{RootCAs: x509.NewCertPool()})
}

// lifetime ends after d or when stdin closes.
func lifetime(d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	return ctx, cancel
}

func serve(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "address to listen on (the xDS listener is asked for by it)")
	d := fs.Duration("for", 2*time.Minute, "exit after this long")
	fs.Parse(args)
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: failClosed(true)})
	if err != nil {
		return err
	}
	srv, err := xds.NewGRPCServer(grpc.Creds(creds), xds.ServingModeCallback(func(addr net.Addr, a xds.ServingModeChangeArgs) {
		fmt.Printf("{\"serving_mode\":%q,\"addr\":%q,\"err\":%q}\n", a.Mode.String(), addr.String(), fmt.Sprint(a.Err))
	}))
	if err != nil {
		return err
	}
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	ctx, cancel := lifetime(*d)
	defer cancel()
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

type result struct {
	T    int64  `json:"t"`
	Code string `json:"code"`
	Err  string `json:"err,omitempty"`
}

func call(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	target := fs.String("target", "", "xds:///<service host>")
	xfcc := fs.String("xfcc", "", "x-forwarded-client-cert to send (the device a gateway speaks for)")
	every := fs.Duration("every", 50*time.Millisecond, "pause between calls")
	timeout := fs.Duration("timeout", 500*time.Millisecond, "deadline of each call")
	d := fs.Duration("for", 2*time.Minute, "exit after this long")
	fs.Parse(args)
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: failClosed(false)})
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	ctx, cancel := lifetime(*d)
	defer cancel()
	enc := json.NewEncoder(os.Stdout)
	for ctx.Err() == nil {
		cctx, ccancel := context.WithTimeout(ctx, *timeout)
		if *xfcc != "" {
			cctx = metadata.AppendToOutgoingContext(cctx, "x-forwarded-client-cert", *xfcc)
		}
		_, err := client.Check(cctx, &healthpb.HealthCheckRequest{})
		ccancel()
		r := result{T: time.Now().UnixNano(), Code: status.Code(err).String()}
		if err != nil {
			r.Err = err.Error()
		}
		if ctx.Err() != nil {
			break
		}
		enc.Encode(r)
		select {
		case <-ctx.Done():
		case <-time.After(*every):
		}
	}
	return nil
}
