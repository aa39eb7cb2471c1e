package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// ProxyTLS is the mutual TLS between the member and the proxies it serves
// (xDS and ext_authz): the member's certificate and key (its SVID,
// spiffe://<td>/vigil/node/<id>, which gateways' Envoy accept by that
// prefix; a DNS or IP SAN for the address proxyless gRPC clients dial), and
// the trust bundle the proxies' SVIDs chain to. Either all three files are
// given or none; spiffe-helper or any other tool may rewrite them, and new
// contents take effect on the next handshake.
//
// WorkloadSocket instead takes both from the local SPIRE agent's Workload
// API: the member's SVID must be spiffe://<td>/vigil/node/<member id>, and
// rotations of SVID and bundle take effect as the agent pushes them.
type ProxyTLS struct {
	CertFile, KeyFile, CAFile string
	WorkloadSocket            string
}

func (p ProxyTLS) enabled() bool {
	return p.CertFile != "" || p.KeyFile != "" || p.CAFile != "" || p.WorkloadSocket != ""
}

// proxyCreds serve the proxy-facing listeners' TLS.
type proxyCreds interface {
	// serverConfig requires and verifies a client certificate.
	serverConfig() *tls.Config
	Close() error
}

// newProxyCreds loads ProxyTLS for member id.
func newProxyCreds(p ProxyTLS, id string, log *slog.Logger) (proxyCreds, error) {
	if p.WorkloadSocket == "" {
		return newReloadingTLS(p, log)
	}
	if p.CertFile != "" || p.KeyFile != "" || p.CAFile != "" {
		return nil, errors.New("proxy TLS takes either --proxy-tls-workload-socket or the --proxy-tls-cert/key/ca files, not both")
	}
	return newWorkloadTLS(p.WorkloadSocket, id, workloadTimeout)
}

// proxyTLSRecheck bounds how often the files are looked at.
const proxyTLSRecheck = time.Second

// reloadingTLS serves the newest good contents of ProxyTLS's files. A
// rewrite that does not load (a half-written file, a key that does not
// match) is logged and the previous contents stay in force.
type reloadingTLS struct {
	files ProxyTLS
	log   *slog.Logger
	now   func() time.Time

	mu      sync.Mutex
	checked time.Time
	raw     [3][]byte // the files' contents in force
	cfg     *tls.Config
	lastErr string // logged once until it changes
}

func newReloadingTLS(files ProxyTLS, log *slog.Logger) (*reloadingTLS, error) {
	if files.CertFile == "" || files.KeyFile == "" || files.CAFile == "" {
		return nil, errors.New("proxy TLS needs --proxy-tls-cert, --proxy-tls-key and --proxy-tls-ca together")
	}
	r := &reloadingTLS{files: files, log: log, now: time.Now}
	raw, err := r.read()
	if err != nil {
		return nil, err
	}
	if r.cfg, err = proxyServerConfig(raw); err != nil {
		return nil, err
	}
	r.raw, r.checked = raw, r.now()
	return r, nil
}

func (r *reloadingTLS) read() (raw [3][]byte, err error) {
	if raw[0], err = os.ReadFile(r.files.CertFile); err != nil {
		return raw, fmt.Errorf("proxy TLS certificate: %w", err)
	}
	if raw[1], err = readSecret(r.files.KeyFile); err != nil {
		return raw, fmt.Errorf("proxy TLS key: %w", err)
	}
	if raw[2], err = os.ReadFile(r.files.CAFile); err != nil {
		return raw, fmt.Errorf("proxy TLS CA bundle: %w", err)
	}
	return raw, nil
}

// proxyServerConfig requires and verifies a client certificate from the
// bundle; what identity it must carry is for the xDS and ext_authz servers
// to decide.
func proxyServerConfig(raw [3][]byte) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(raw[0], raw[1])
	if err != nil {
		return nil, fmt.Errorf("proxy TLS certificate and key: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw[2]) {
		return nil, errors.New("proxy TLS CA bundle holds no PEM certificate")
	}
	return mtlsServer(cert, pool), nil
}

// mtlsServer presents cert and requires a client certificate that chains
// to pool (standard verification, so the servers can read the verified
// chain's SPIFFE ID).
func mtlsServer(cert tls.Certificate, pool *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		NextProtos:   []string{"h2"},
	}
}

// perHandshake is a listener's tls.Config that takes each handshake's
// configuration from get.
func perHandshake(get func(*tls.ClientHelloInfo) (*tls.Config, error)) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}, GetConfigForClient: get}
}

// config is tls.Config.GetConfigForClient: the configuration in force,
// reloaded first if a file changed (looked at most once a second).
func (r *reloadingTLS) config(*tls.ClientHelloInfo) (*tls.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.checked) >= proxyTLSRecheck {
		r.checked = now
		raw, err := r.read()
		if err == nil && !(bytes.Equal(raw[0], r.raw[0]) && bytes.Equal(raw[1], r.raw[1]) && bytes.Equal(raw[2], r.raw[2])) {
			var cfg *tls.Config
			if cfg, err = proxyServerConfig(raw); err == nil {
				r.cfg, r.raw = cfg, raw
				r.log.Info("proxy TLS files reloaded", "cert", r.files.CertFile, "ca", r.files.CAFile)
			}
		}
		switch {
		case err != nil && err.Error() != r.lastErr:
			r.log.Warn("proxy TLS files did not load; the previous ones stay in force", "err", err)
			r.lastErr = err.Error()
		case err == nil:
			r.lastErr = ""
		}
	}
	return r.cfg, nil
}

// serverConfig is the tls.Config the xDS and ext_authz listeners use.
func (r *reloadingTLS) serverConfig() *tls.Config {
	return perHandshake(r.config)
}

func (r *reloadingTLS) Close() error { return nil }

// workloadTimeout bounds the wait for the member's first SVID.
const workloadTimeout = 30 * time.Second

// workloadTLS serves the SVID and bundle the SPIRE agent pushes.
type workloadTLS struct {
	src *workloadapi.X509Source
}

// newWorkloadTLS waits up to timeout for the agent at socket to issue this
// member's SVID (spiffe://<td>/vigil/node/<id>; a workload holding several
// SVIDs uses that one).
func newWorkloadTLS(socket, id string, timeout time.Duration) (*workloadTLS, error) {
	abs, err := filepath.Abs(socket)
	if err != nil {
		return nil, err
	}
	want := "/vigil/node/" + id
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+abs)),
		workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.ID.Path() == want {
					return s
				}
			}
			return nil
		}))
	if err != nil {
		return nil, fmt.Errorf("proxy TLS: no SVID from the SPIRE agent at %s within %v: %w", abs, timeout, err)
	}
	if _, err := src.GetX509SVID(); err != nil {
		src.Close()
		return nil, fmt.Errorf("proxy TLS: the SPIRE agent at %s issues this member no spiffe://<td>%s identity", abs, want)
	}
	return &workloadTLS{src: src}, nil
}

// config builds the configuration of one handshake from the newest SVID
// and bundle; without them the handshake fails (closed).
func (w *workloadTLS) config(*tls.ClientHelloInfo) (*tls.Config, error) {
	svid, err := w.src.GetX509SVID()
	if err != nil {
		return nil, err
	}
	bundle, err := w.src.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, ca := range bundle.X509Authorities() {
		pool.AddCert(ca)
	}
	cert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return mtlsServer(cert, pool), nil
}

func (w *workloadTLS) serverConfig() *tls.Config {
	return perHandshake(w.config)
}

func (w *workloadTLS) Close() error { return w.src.Close() }
