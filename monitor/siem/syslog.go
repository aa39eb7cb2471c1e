package siem

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Syslog facilities (RFC 5424 §6.2.1) a SyslogConfig may name.
const (
	FacilityAuthPriv = 10
	FacilityLocal0   = 16
	FacilityLocal4   = 20
	FacilityLocal7   = 23
	// DefaultFacility is local4, a local-use facility: operators route
	// it to their SIEM collector without mixing it with the system's own
	// authentication logs (authpriv).
	DefaultFacility = FacilityLocal4
)

// SyslogSeverity maps an alert severity to a syslog severity: critical 2
// (crit), high 3 (err), medium 4 (warning), low 5 (notice), anything else
// 6 (info).
func SyslogSeverity(severity string) int {
	return [...]int{6, 5, 4, 3, 2}[severityRank(severity)]
}

// DefaultMaxMessage is a syslog message's default size bound in bytes.
const DefaultMaxMessage = 8000

// SyslogConfig configures a [Syslog] sink.
type SyslogConfig struct {
	// URL is tcp://host:port or tls://host:port.
	URL string
	// CAFile (tls) holds the PEM certificates the receiver's must chain to
	// (default: the system's roots). The receiver's certificate must name
	// ServerName, or else the URL's host.
	CAFile     string
	ServerName string
	// CertFile and KeyFile (tls, optional) are a client certificate for a
	// receiver that asks for one. They and CAFile are read at each
	// connection, so renewed files are picked up.
	CertFile, KeyFile string
	// Hostname is the HOSTNAME field and CEF's dvchost: the member's ID.
	Hostname string
	// Facility is 1–23; 0 means DefaultFacility (local4).
	Facility int
	// Version is the product version in the CEF header (default
	// DefaultVersion()).
	Version string
	// MaxMessage bounds a message's length in bytes (default 8000): a
	// longer alert loses its evidence, then the end of its message and
	// title. RFC 5425 receivers should accept 8192 bytes, but rsyslog's
	// default (maxMessageSize 8k) keeps 8096 and splits off the rest as
	// another message.
	MaxMessage int
	// Name is the sink's name (default "syslog").
	Name string
	// DialTimeout and WriteTimeout bound connecting (with the TLS
	// handshake) and writing one batch (defaults 10 s each).
	DialTimeout, WriteTimeout time.Duration
}

// Syslog delivers alerts as RFC 5424 messages with CEF payloads over one
// TCP or TLS connection with octet-counting framing (RFC 6587 §3.4.1,
// RFC 5425 §4.3), reconnecting after any error.
//
// A batch counts as delivered once it is written to a connection that was
// still open when the batch began (before each batch the sink checks that
// the receiver has not closed the connection). Syslog has no
// application-level acknowledgement, so a receiver that crashes with
// messages in its socket buffers loses them.
type Syslog struct {
	name       string
	url        string
	addr       string
	tls        bool
	caFile     string
	serverName string
	certFile   string
	keyFile    string
	hostname   string
	facility   int
	version    string
	maxMessage int
	dialTO     time.Duration
	writeTO    time.Duration

	mu   sync.Mutex
	conn net.Conn
	buf  []byte
}

// NewSyslog checks cfg (and reads its TLS files once, to fail early) and
// returns the sink; it connects at the first delivery.
func NewSyslog(cfg SyslogConfig) (*Syslog, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("siem: syslog URL: %w", err)
	}
	s := &Syslog{
		name:       cmp.Or(cfg.Name, "syslog"),
		url:        cfg.URL,
		addr:       u.Host,
		caFile:     cfg.CAFile,
		serverName: cmp.Or(cfg.ServerName, u.Hostname()),
		certFile:   cfg.CertFile,
		keyFile:    cfg.KeyFile,
		hostname:   syslogField(cfg.Hostname, 255),
		facility:   cfg.Facility,
		version:    cmp.Or(cfg.Version, DefaultVersion()),
		maxMessage: cfg.MaxMessage,
		dialTO:     cfg.DialTimeout,
		writeTO:    cfg.WriteTimeout,
	}
	switch u.Scheme {
	case "tcp":
	case "tls":
		s.tls = true
	default:
		return nil, fmt.Errorf("siem: syslog URL %q: want tcp://host:port or tls://host:port", cfg.URL)
	}
	if u.Hostname() == "" || u.Port() == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("siem: syslog URL %q: want %s://host:port", cfg.URL, u.Scheme)
	}
	if !s.tls && (cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "") {
		return nil, fmt.Errorf("siem: syslog URL %q: a CA or client certificate needs tls://", cfg.URL)
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("siem: syslog: a client certificate needs both a certificate and a key file")
	}
	if s.facility == 0 {
		s.facility = DefaultFacility
	}
	if s.facility < 0 || s.facility > 23 {
		return nil, fmt.Errorf("siem: syslog facility %d is not 0–23", cfg.Facility)
	}
	if s.maxMessage == 0 {
		s.maxMessage = DefaultMaxMessage
	}
	if s.maxMessage < 480 {
		return nil, fmt.Errorf("siem: syslog MaxMessage %d is below 480", s.maxMessage)
	}
	if s.dialTO <= 0 {
		s.dialTO = 10 * time.Second
	}
	if s.writeTO <= 0 {
		s.writeTO = 10 * time.Second
	}
	if s.tls {
		if _, err := s.tlsConfig(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Name is the sink's name.
func (s *Syslog) Name() string { return s.name }

// Format renders a as an RFC 5424 message (without its frame):
//
//	<PRI>1 TIMESTAMP HOSTNAME vigil - MSGID - CEF:0|…
//
// PRI is facility×8 plus SyslogSeverity; TIMESTAMP is the alert's time in
// UTC with microseconds; MSGID is the alert's kind; there is no PROCID and
// no structured data; MSG is FormatCEF's line (no BOM).
func (s *Syslog) Format(a Alert) []byte {
	msg := s.format(a)
	for range 8 {
		excess := len(msg) - s.maxMessage
		if excess <= 0 {
			break
		}
		switch {
		case len(a.Evidence) > 0:
			a.Evidence = nil
		case a.Message != "":
			a.Message = truncate(a.Message, len(a.Message)-excess-8)
		case a.Title != "":
			a.Title = truncate(a.Title, len(a.Title)-excess-8)
		default:
			return msg
		}
		msg = s.format(a)
	}
	return msg
}

func (s *Syslog) format(a Alert) []byte {
	t := a.Time
	if t.IsZero() {
		t = time.Now()
	}
	b := make([]byte, 0, 512)
	b = append(b, '<')
	b = strconv.AppendInt(b, int64(s.facility*8+SyslogSeverity(a.Severity)), 10)
	b = append(b, ">1 "...)
	b = t.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z07:00")
	b = append(b, ' ')
	b = append(b, s.hostname...)
	b = append(b, " vigil - "...)
	b = append(b, syslogField(a.Kind, 32)...)
	b = append(b, " - "...)
	return append(b, FormatCEF(a, s.version, s.hostname)...)
}

// truncate cuts s to at most n bytes (at a rune boundary) and marks the cut.
func truncate(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// Deliver writes the batch, each message framed as "LEN SP MSG", in one
// write on the (re)used connection.
func (s *Syslog) Deliver(ctx context.Context, alerts []Alert) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = s.buf[:0]
	for _, a := range alerts {
		msg := s.Format(a)
		s.buf = strconv.AppendInt(s.buf, int64(len(msg)), 10)
		s.buf = append(s.buf, ' ')
		s.buf = append(s.buf, msg...)
	}
	if s.conn != nil && !stillOpen(s.conn) {
		s.conn.Close()
		s.conn = nil
	}
	if s.conn == nil {
		c, err := s.dial(ctx)
		if err != nil {
			return fmt.Errorf("syslog %s: %w", s.url, err)
		}
		s.conn = c
	}
	c := s.conn
	deadline := time.Now().Add(s.writeTO)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetWriteDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetWriteDeadline(time.Unix(1, 0)) })
	_, err := c.Write(s.buf)
	stop()
	if err != nil {
		c.Close()
		s.conn = nil
		return fmt.Errorf("syslog %s: write: %w", s.url, err)
	}
	return nil
}

// Close closes the connection.
func (s *Syslog) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn = nil
	return err
}

func (s *Syslog) dial(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.dialTO)
	defer cancel()
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	if !s.tls {
		return d.DialContext(ctx, "tcp", s.addr)
	}
	cfg, err := s.tlsConfig()
	if err != nil {
		return nil, err
	}
	return (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(ctx, "tcp", s.addr)
}

func (s *Syslog) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: s.serverName}
	if s.caFile != "" {
		pem, err := os.ReadFile(s.caFile)
		if err != nil {
			return nil, fmt.Errorf("siem: syslog CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("siem: syslog CA: no PEM certificate in %s", s.caFile)
		}
		cfg.RootCAs = pool
	}
	if s.certFile != "" {
		cert, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
		if err != nil {
			return nil, fmt.Errorf("siem: syslog client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// stillOpen reports whether the receiver has not closed (or reset) c: a
// receiver never sends, so a read that times out means it is open.
func stillOpen(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(time.Millisecond))
	var b [64]byte
	_, err := c.Read(b[:])
	c.SetReadDeadline(time.Time{})
	var ne net.Error
	return err == nil || errors.As(err, &ne) && ne.Timeout()
}

// syslogField makes s a valid RFC 5424 header field: printable US-ASCII
// without spaces ('_' instead), at most n bytes, "-" (NILVALUE) if empty.
func syslogField(s string, n int) string {
	if s == "" {
		return "-"
	}
	b := []byte(s)
	for i, c := range b {
		if c < 33 || c > 126 {
			b[i] = '_'
		}
	}
	if len(b) > n {
		b = b[:n]
	}
	return string(b)
}
