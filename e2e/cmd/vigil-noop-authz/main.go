// Command vigil-noop-authz is an ext_authz Check server that does nothing:
// it registers envoy.service.auth.v3.Authorization and answers every Check
// OK without reading it. `vigil-load authz-compare` runs it beside a Vigil
// member as the floor a Check server cannot go below on the same machine,
// connections and requests.
//
//	vigil-noop-authz [-addr 127.0.0.1:0] [-tls-cert F -tls-key F -tls-ca F]
//
// With the -tls-* files it serves mutual TLS as a member's proxy port does
// with --proxy-tls-*: TLS 1.2 or newer, h2, a client certificate required
// and verified against the bundle (nothing more is checked: no SPIFFE ID,
// no caller). Like the member's proxy port it refuses requests over 256
// KiB. It prints "listening on ADDR" once it serves, and exits when its
// standard input closes.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// noop answers OK. The response is built once: nothing per Check but
// gRPC's own work.
type noop struct {
	authv3.UnimplementedAuthorizationServer
}

var ok = &authv3.CheckResponse{Status: &status.Status{}}

func (noop) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return ok, nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	cert := flag.String("tls-cert", "", "server certificate (PEM); with -tls-key and -tls-ca, serve mutual TLS")
	key := flag.String("tls-key", "", "server key (PEM)")
	ca := flag.String("tls-ca", "", "CA bundle client certificates must chain to (PEM)")
	flag.Parse()
	if err := run(*addr, *cert, *key, *ca); err != nil {
		fmt.Fprintln(os.Stderr, "vigil-noop-authz:", err)
		os.Exit(1)
	}
}

func run(addr, cert, key, ca string) error {
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(256 << 10)}
	if cert != "" || key != "" || ca != "" {
		cfg, err := mtls(cert, key, ca)
		if err != nil {
			return err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(opts...)
	authv3.RegisterAuthorizationServer(srv, noop{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		srv.Stop()
	}()
	fmt.Printf("listening on %s\n", ln.Addr())
	return srv.Serve(ln)
}

// mtls is the member's proxy-port configuration (node/proxytls.go).
func mtls(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("-tls-cert, -tls-key and -tls-ca go together")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	bundle, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		return nil, errors.New("-tls-ca holds no PEM certificate")
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		NextProtos:   []string{"h2"},
	}, nil
}
