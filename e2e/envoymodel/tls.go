package envoymodel

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// tlsPolicy is what one TLS context presents and demands of its peer.
type tlsPolicy struct {
	local       *tls.Certificate // the certificate presented (SDS)
	pool        *x509.CertPool   // the CAs a peer must chain to (SDS); nil: no validation context
	untrusted   bool             // trust_chain_verification: ACCEPT_UNTRUSTED
	sans        []*tlsv3.SubjectAltNameMatcher
	anySANs     []*matcherv3.StringMatcher // match_subject_alt_names (any SAN type)
	requirePeer bool
	sni         string
}

// tlsPolicyOf reads a transport socket's TLS context (downstream or
// upstream); nil when the socket is not TLS.
func (p *Proxy) tlsPolicyOf(ts *corev3.TransportSocket) (*tlsPolicy, error) {
	if ts == nil {
		return nil, nil
	}
	cfg := ts.GetTypedConfig()
	var common *tlsv3.CommonTlsContext
	tp := &tlsPolicy{}
	switch {
	case cfg.MessageIs(&tlsv3.DownstreamTlsContext{}):
		d := &tlsv3.DownstreamTlsContext{}
		if err := cfg.UnmarshalTo(d); err != nil {
			return nil, err
		}
		common, tp.requirePeer = d.GetCommonTlsContext(), d.GetRequireClientCertificate().GetValue()
	case cfg.MessageIs(&tlsv3.UpstreamTlsContext{}):
		u := &tlsv3.UpstreamTlsContext{}
		if err := cfg.UnmarshalTo(u); err != nil {
			return nil, err
		}
		common, tp.requirePeer, tp.sni = u.GetCommonTlsContext(), true, u.GetSni()
	default:
		return nil, unmodelled("transport socket %s (%s)", ts.GetName(), cfg.GetTypeUrl())
	}
	if len(common.GetTlsCertificates()) > 0 || common.GetTlsCertificateProviderInstance() != nil {
		return nil, unmodelled("inline or provider TLS certificates")
	}
	if sds := common.GetTlsCertificateSdsSecretConfigs(); len(sds) > 0 {
		cert, err := p.Secrets.TLSCertificate(sds[0].GetName())
		if err != nil {
			return nil, fmt.Errorf("SDS tls_certificate %q: %w", sds[0].GetName(), err)
		}
		tp.local = cert
	}
	var vc *tlsv3.CertificateValidationContext
	var sdsName string
	switch v := common.GetValidationContextType().(type) {
	case nil:
	case *tlsv3.CommonTlsContext_ValidationContext:
		vc = v.ValidationContext
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		sdsName = v.ValidationContextSdsSecretConfig.GetName()
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		vc, sdsName = v.CombinedValidationContext.GetDefaultValidationContext(), v.CombinedValidationContext.GetValidationContextSdsSecretConfig().GetName()
	default:
		return nil, unmodelled("validation context %T", v)
	}
	if sdsName != "" {
		pool, err := p.Secrets.ValidationContext(sdsName)
		if err != nil {
			return nil, fmt.Errorf("SDS validation_context %q: %w", sdsName, err)
		}
		tp.pool = pool
	}
	if vc != nil {
		if vc.GetTrustedCa() != nil || len(vc.GetVerifyCertificateSpki()) > 0 || len(vc.GetVerifyCertificateHash()) > 0 ||
			vc.GetCustomValidatorConfig() != nil || vc.GetCrl() != nil || vc.GetSystemRootCerts() != nil {
			return nil, unmodelled("validation context %v", vc)
		}
		tp.sans, tp.anySANs = vc.GetMatchTypedSubjectAltNames(), vc.GetMatchSubjectAltNames()
		tp.untrusted = vc.GetTrustChainVerification() == tlsv3.CertificateValidationContext_ACCEPT_UNTRUSTED
	}
	return tp, nil
}

// verifyPeer is the handshake's certificate check: the chain must lead to
// the validation context's CAs, and some SAN must match one of the
// configured matchers (when there are any).
func (tp *tlsPolicy) verifyPeer(chain []*x509.Certificate, now time.Time) error {
	if len(chain) == 0 {
		if tp.requirePeer {
			return errors.New("the peer presented no certificate, and one is required")
		}
		return nil
	}
	leaf := chain[0]
	if tp.pool != nil && !tp.untrusted {
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: tp.pool, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return fmt.Errorf("certificate of %s does not verify: %w", principalOf(leaf), err)
		}
	}
	if len(tp.sans) == 0 && len(tp.anySANs) == 0 {
		return nil
	}
	for _, m := range tp.sans {
		var values []string
		switch m.GetSanType() {
		case tlsv3.SubjectAltNameMatcher_URI:
			values = uriSANs(leaf)
		case tlsv3.SubjectAltNameMatcher_DNS:
			values = leaf.DNSNames
		case tlsv3.SubjectAltNameMatcher_EMAIL:
			values = leaf.EmailAddresses
		case tlsv3.SubjectAltNameMatcher_IP_ADDRESS:
			for _, ip := range leaf.IPAddresses {
				values = append(values, ip.String())
			}
		default:
			return unmodelled("SAN type %v", m.GetSanType())
		}
		for _, v := range values {
			if ok, err := matchString(m.GetMatcher(), v); err != nil || ok {
				return err
			}
		}
	}
	all := append(append(uriSANs(leaf), leaf.DNSNames...), leaf.EmailAddresses...)
	for _, m := range tp.anySANs {
		for _, v := range all {
			if ok, err := matchString(m, v); err != nil || ok {
				return err
			}
		}
	}
	return fmt.Errorf("no SAN of %s matches the validation context's SAN matchers", principalOf(leaf))
}

func uriSANs(c *x509.Certificate) []string {
	var out []string
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	return out
}

// principalOf is what ext_authz reports as a peer's principal
// (check_request_utils.cc setAttrContextPeer): the first URI SAN, else
// the first DNS SAN, else the subject.
func principalOf(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	if u := uriSANs(c); len(u) > 0 {
		return u[0]
	}
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	return c.Subject.String()
}

// certHash is the XFCC Hash: hex SHA-256 of the peer certificate's DER.
func certHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// urlEncodedPEM is a certificate as ext_authz and XFCC carry it: PEM,
// percent-encoded except for unreserved characters (an approximation of
// Envoy's urlEncodedPemEncodedPeerCertificate).
func urlEncodedPEM(c *x509.Certificate) string {
	const unreserved = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
	var b strings.Builder
	for _, ch := range pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}) {
		if strings.IndexByte(unreserved, ch) >= 0 {
			b.WriteByte(ch)
		} else {
			fmt.Fprintf(&b, "%%%02X", ch)
		}
	}
	return b.String()
}

// leafOf parses the first certificate of a tls.Certificate.
func leafOf(c *tls.Certificate) (*x509.Certificate, error) {
	if c == nil || len(c.Certificate) == 0 {
		return nil, nil
	}
	if c.Leaf != nil {
		return c.Leaf, nil
	}
	return x509.ParseCertificate(c.Certificate[0])
}

// chainOf parses a tls.Certificate's whole chain.
func chainOf(c *tls.Certificate) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, der := range c.Certificate {
		x, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, nil
}

// clientTLS is a crypto/tls client configuration with tp's semantics:
// present tp.local, verify the server like Envoy does (chain to the pool,
// SAN matchers; no host name check).
func (tp *tlsPolicy) clientTLS(now func() time.Time) *tls.Config {
	cfg := &tls.Config{InsecureSkipVerify: true, ServerName: tp.sni, NextProtos: []string{"h2"}}
	if tp.local != nil {
		cfg.Certificates = []tls.Certificate{*tp.local}
	}
	cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		var chain []*x509.Certificate
		for _, der := range raw {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return err
			}
			chain = append(chain, c)
		}
		return tp.verifyPeer(chain, now())
	}
	return cfg
}
