package envoymodel

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
)

// Header is one request header field; names are lower case, as Envoy
// keeps them (HTTP/2 and Envoy's header map are lower case).
type Header struct{ Name, Value string }

// Request is one downstream HTTP request as a client sends it.
type Request struct {
	Method, Path, Authority string
	// Scheme is :scheme; empty means https on a TLS listener, else http.
	Scheme  string
	Headers []Header
}

// Get returns the values of header name, joined with "," as Envoy joins a
// repeated header for matching; ok is false when it is absent.
func (r *Request) Get(name string) (string, bool) {
	var vs []string
	for _, h := range r.headerMap() {
		if h.Name == name {
			vs = append(vs, h.Value)
		}
	}
	return strings.Join(vs, ","), vs != nil
}

// headerMap is the request as Envoy's header map: pseudo-headers first.
func (r *Request) headerMap() []Header {
	hs := []Header{{":method", r.Method}, {":path", r.Path}, {":authority", r.Authority}, {":scheme", r.Scheme}}
	return append(hs, r.Headers...)
}

// Downstream is the connection a request arrives on.
type Downstream struct {
	// LocalPort selects the listener.
	LocalPort uint32
	// RemoteAddr is the peer's address (x-forwarded-for, source.address).
	RemoteAddr netip.AddrPort
	// PeerChain is the certificate chain the peer presents, leaf first;
	// nil for a client without a certificate.
	PeerChain []*x509.Certificate
	// SNI is the server name the client asked for, if any.
	SNI string
}

// SecretSource stands for SDS (the SPIRE agent): it hands out the
// certificates and trust bundles that listeners and clusters name.
type SecretSource interface {
	// TLSCertificate is the SDS tls_certificate secret name: an SVID.
	TLSCertificate(name string) (*tls.Certificate, error)
	// ValidationContext is the SDS validation_context secret name: the
	// CAs a peer's chain must lead to.
	ValidationContext(name string) (*x509.CertPool, error)
}

// Proxy models one Envoy holding one node's resources.
type Proxy struct {
	// Name is used in outcomes and messages (e.g. "gateway gw-north-1").
	Name      string
	Resources *Resources
	// Bootstrap is what the proxy started with (ParseBootstrap reads
	// `vigil envoy bootstrap`): its static clusters are the only ones a
	// gRPC access log may use, and its node identifies the access log
	// streams. Without it a gRPC access log is not modelled (an error).
	Bootstrap *bootstrapv3.Bootstrap
	Secrets   SecretSource
	// AuthzTimeout, when set, replaces the ext_authz grpc_service timeout
	// (a model on a loaded test host must not fail closed on a slow
	// handshake that a long-running Envoy would have made long before).
	AuthzTimeout time.Duration
	// Now is the clock for certificate checks; time.Now when nil.
	Now func() time.Time

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // per ext_authz cluster
}

// Close closes the proxy's ext_authz connections.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *Proxy) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// Outcome is what the modelled Envoy did with one request.
type Outcome struct {
	Proxy string
	// Forwarded is set when the router sent the request to Cluster.
	Forwarded bool
	// Status is the local reply's HTTP status when not forwarded (0 when
	// the connection itself was refused, as by TLS).
	Status int
	Body   string
	// DecidedBy is the step that ended the request: "listener", "tls",
	// "hcm", "route", an HTTP filter's name, or "router" (which also
	// forwards).
	DecidedBy string
	// Reason says why, in the deciding step's terms; for ext_authz the
	// authorizer's reason.
	Reason string

	Listener, VirtualHost, Route, Cluster string
	// Upstream is the request as the router would send it.
	Upstream *Request
	// Checks are the ext_authz calls made.
	Checks []Check
	// RateLimits are the local rate limit buckets the request would spend.
	RateLimits []RateLimitUse
	// AccessLogs are what the connection manager's access loggers record
	// for the request, in their order.
	AccessLogs []AccessLog
	// PeerCert and LocalCert are the TLS identities of the connection.
	PeerCert, LocalCert *x509.Certificate
	// Steps trace the model's path through Envoy's request processing.
	Steps []string
}

// Check is one ext_authz call.
type Check struct {
	Filter   string
	Cluster  string
	Request  *authv3.CheckRequest
	Response *authv3.CheckResponse
	Err      error
}

// RateLimitUse is what the local rate limit filter would do.
type RateLimitUse struct {
	Filter            string
	Enabled, Enforced bool
	PerConnection     bool
	// Descriptors are the request's descriptors, as key=value lists.
	Descriptors []string
	// Buckets are the token buckets that would be spent: a matched
	// descriptor's entries and "N per interval", or "default ...".
	Buckets []string
}

func (o *Outcome) step(format string, args ...any) {
	o.Steps = append(o.Steps, fmt.Sprintf(format, args...))
}

// end ends the request with a local reply.
func (o *Outcome) end(by string, status int, reason string) *Outcome {
	o.DecidedBy, o.Status, o.Reason = by, status, reason
	o.step("%s: %d %s", by, status, reason)
	return o
}

// Allowed reports whether the request was forwarded upstream.
func (o *Outcome) Allowed() bool { return o.Forwarded }

// Summary is one line: where the request went or who stopped it and why.
func (o *Outcome) Summary() string {
	if o.Forwarded {
		return fmt.Sprintf("%s forwarded it to cluster %s (route %q)", o.Proxy, o.Cluster, o.Route)
	}
	if o.Status == 0 {
		return fmt.Sprintf("%s refused the connection at %s: %s", o.Proxy, o.DecidedBy, o.Reason)
	}
	return fmt.Sprintf("%s answered %d at %s (route %q): %s", o.Proxy, o.Status, o.DecidedBy, o.Route, o.Reason)
}

// Trace is the summary and every step, one per line.
func (o *Outcome) Trace() string {
	return o.Summary() + "\n\t" + strings.Join(o.Steps, "\n\t")
}
