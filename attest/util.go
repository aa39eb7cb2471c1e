package attest

import (
	"bytes"
	"crypto/x509"
	"io"
	"strings"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

func lowerHex(s string) string { return strings.ToLower(s) }

// CertPool is a set of trusted roots (a class's DICE roots).
type CertPool struct {
	pool  *x509.CertPool
	certs []*x509.Certificate
}

// NewCertPool holds certs.
func NewCertPool(certs []*x509.Certificate) *CertPool {
	p := &CertPool{pool: x509.NewCertPool(), certs: certs}
	for _, c := range certs {
		p.pool.AddCert(c)
	}
	return p
}

// Pool is the x509 pool of the roots; Len how many there are.
func (p *CertPool) Pool() *x509.CertPool { return p.pool }
func (p *CertPool) Len() int {
	if p == nil {
		return 0
	}
	return len(p.certs)
}
