package siem

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"
)

func newTestSyslog(t *testing.T, cfg SyslogConfig) *Syslog {
	t.Helper()
	if cfg.Hostname == "" {
		cfg.Hostname = "vigil-1"
	}
	if cfg.Version == "" {
		cfg.Version = "1.4.0"
	}
	s, err := NewSyslog(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSyslogFrameExact pins the exact bytes on the wire of a small alert,
// written out by hand from RFC 5424, RFC 6587 §3.4.1 and the CEF rules.
func TestSyslogFrameExact(t *testing.T) {
	r := newSyslogReceiver(t, "127.0.0.1:0", nil)
	s := newTestSyslog(t, SyslogConfig{URL: "tcp://" + r.addr()})
	a := Alert{
		Kind:     KindFinding,
		ID:       "f-9",
		Time:     time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC),
		Device:   "cam-3",
		Detector: "denied|burst",
		Severity: SeverityCritical,
		Risk:     40,
		Title:    `a\b|c`,
		Message:  "x=1\ny",
	}
	const msg = `<162>1 2026-01-02T03:04:05.000006Z vigil-1 vigil - finding - ` +
		`CEF:0|Vigil|Vigil|1.4.0|denied\|burst|a\\b\|c|10|` +
		`rt=1767323045000 dvchost=vigil-1 externalId=f-9 cat=finding shost=cam-3 msg=x\=1\ny ` +
		`cs5Label=detector cs5=denied|burst cn1Label=risk cn1=40`
	if got := string(s.Format(a)); got != msg {
		t.Fatalf("Format:\n got %s\nwant %s", got, msg)
	}
	if err := s.Deliver(context.Background(), []Alert{a, a}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "two messages", func() bool { return len(r.messages()) == 2 })
	for _, m := range r.messages() {
		if m != msg {
			t.Errorf("received %q", m)
		}
	}
}

// TestSyslogGolden pins the full message of a finding and an incident,
// with every escaping case.
func TestSyslogGolden(t *testing.T) {
	s := newTestSyslog(t, SyslogConfig{URL: "tcp://127.0.0.1:1"})
	var b []byte
	for _, a := range []Alert{sampleFinding(), sampleIncident()} {
		m := s.Format(a)
		b = append(b, m...)
		b = append(b, '\n')
	}
	golden(t, "syslog.golden", b)
}

func TestCEFEscaping(t *testing.T) {
	for _, tc := range []struct{ in, header, value string }{
		{`plain`, `plain`, `plain`},
		{`a|b`, `a\|b`, `a|b`},
		{`a\b`, `a\\b`, `a\\b`},
		{`k=v`, `k=v`, `k\=v`},
		{"one\ntwo", "one two", `one\ntwo`},
		{"one\r\ntwo", "one  two", `one\r\ntwo`},
		{"tab\there\x00", "tab here ", "tab here "},
		{`\|=`, `\\\|=`, `\\|\=`},
		{"é≥", "é≥", "é≥"},
	} {
		var h, v strings.Builder
		cefHeader(&h, tc.in)
		cefValue(&v, tc.in)
		if h.String() != tc.header || v.String() != tc.value {
			t.Errorf("%q: header %q, value %q; want %q, %q", tc.in, h.String(), v.String(), tc.header, tc.value)
		}
	}
}

func TestSyslogSeverityAndFacility(t *testing.T) {
	for sev, want := range map[string]int{SeverityCritical: 2, SeverityHigh: 3, SeverityMedium: 4, SeverityLow: 5, "": 6, "bogus": 6} {
		if got := SyslogSeverity(sev); got != want {
			t.Errorf("SyslogSeverity(%q) = %d, want %d", sev, got, want)
		}
	}
	for sev, want := range map[string]int{SeverityCritical: 10, SeverityHigh: 8, SeverityMedium: 6, SeverityLow: 3, "": 0} {
		if got := CEFSeverity(sev); got != want {
			t.Errorf("CEFSeverity(%q) = %d, want %d", sev, got, want)
		}
	}
	s := newTestSyslog(t, SyslogConfig{URL: "tcp://127.0.0.1:1", Facility: FacilityAuthPriv})
	if got := string(s.Format(Alert{Kind: KindIncident, ID: "i", Severity: SeverityLow, Time: testTime})); !strings.HasPrefix(got, "<85>1 ") {
		t.Errorf("authpriv/low: %s", got)
	}
}

func TestSyslogMaxMessage(t *testing.T) {
	s := newTestSyslog(t, SyslogConfig{URL: "tcp://127.0.0.1:1", MaxMessage: 600})
	a := sampleFinding()
	a.Message = strings.Repeat("é", 1000)
	m := s.Format(a)
	if len(m) > 600 {
		t.Fatalf("message of %d bytes exceeds MaxMessage 600: %s", len(m), m)
	}
	if strings.Contains(string(m), "ev_") || !strings.Contains(string(m), "msg=éé") || !strings.Contains(string(m), "…") {
		t.Errorf("want the evidence dropped and the message cut: %s", m)
	}
}

func TestSyslogConfigErrors(t *testing.T) {
	for _, cfg := range []SyslogConfig{
		{URL: "udp://127.0.0.1:514"},
		{URL: "tcp://127.0.0.1"},
		{URL: "tcp://:514"},
		{URL: "tcp://127.0.0.1:514/path"},
		{URL: "tcp://127.0.0.1:514", CAFile: "ca.pem"},
		{URL: "tls://127.0.0.1:6514", CAFile: "/nonexistent/ca.pem"},
		{URL: "tls://127.0.0.1:6514", CertFile: "c.pem"},
		{URL: "tcp://127.0.0.1:514", Facility: 24},
	} {
		if _, err := NewSyslog(cfg); err == nil {
			t.Errorf("NewSyslog(%+v): want an error", cfg)
		}
	}
}

func TestSyslogTLS(t *testing.T) {
	pki := newTestPKI(t)
	r := newSyslogReceiver(t, "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pki.server}, MinVersion: tls.VersionTLS12})
	a := sampleFinding()

	s := newTestSyslog(t, SyslogConfig{URL: "tls://" + r.addr(), CAFile: pki.caFile})
	if err := s.Deliver(context.Background(), []Alert{a}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the message over TLS", func() bool { return len(r.messages()) == 1 })
	if got, want := r.messages()[0], string(s.Format(a)); got != want {
		t.Errorf("received %q, want %q", got, want)
	}

	// Another name than the certificate's is refused, and so is a server
	// whose certificate does not chain to the CA file.
	wrongName := newTestSyslog(t, SyslogConfig{URL: "tls://" + r.addr(), CAFile: pki.caFile, ServerName: "siem.example"})
	if err := wrongName.Deliver(context.Background(), []Alert{a}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong server name: want a certificate error, got %v", err)
	}
	other := newTestPKI(t)
	wrongCA := newTestSyslog(t, SyslogConfig{URL: "tls://" + r.addr(), CAFile: other.caFile})
	if err := wrongCA.Deliver(context.Background(), []Alert{a}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong CA: want a certificate error, got %v", err)
	}
}

func TestSyslogTLSClientCertificate(t *testing.T) {
	pki := newTestPKI(t)
	r := newSyslogReceiver(t, "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pki.server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pki.pool,
		MinVersion:   tls.VersionTLS12,
	})
	s := newTestSyslog(t, SyslogConfig{URL: "tls://localhost:" + portOf(r.addr()), CAFile: pki.caFile, CertFile: pki.clientCert, KeyFile: pki.clientKey})
	if err := s.Deliver(context.Background(), []Alert{sampleIncident()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the message over mutual TLS", func() bool { return len(r.messages()) == 1 })
}

// TestSyslogReusesConnection: batches share one connection, over TCP and
// over TLS (whose liveness check reads with a deadline).
func TestSyslogReusesConnection(t *testing.T) {
	pki := newTestPKI(t)
	for _, tc := range []struct {
		name string
		tls  *tls.Config
	}{
		{"tcp", nil},
		{"tls", &tls.Config{Certificates: []tls.Certificate{pki.server}, MinVersion: tls.VersionTLS12}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newSyslogReceiver(t, "127.0.0.1:0", tc.tls)
			cfg := SyslogConfig{URL: "tcp://" + r.addr()}
			if tc.tls != nil {
				cfg = SyslogConfig{URL: "tls://" + r.addr(), CAFile: pki.caFile}
			}
			s := newTestSyslog(t, cfg)
			for i := range 20 {
				if err := s.Deliver(context.Background(), []Alert{numbered(2 * i), numbered(2*i + 1)}); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, "40 messages", func() bool { return len(r.messages()) == 40 })
			var ids []string
			for _, m := range r.messages() {
				ids = append(ids, cefID(t, m))
			}
			checkOrder(t, ids, 0, 40)
			if n := r.connections(); n != 1 {
				t.Errorf("%d connections for 20 batches, want 1", n)
			}
		})
	}
}

func portOf(addr string) string {
	return addr[strings.LastIndexByte(addr, ':')+1:]
}

// TestSyslogReconnects: a receiver that closes its side (a restart) is
// noticed before the next batch, which goes over a new connection instead
// of being lost.
func TestSyslogReconnects(t *testing.T) {
	r := newSyslogReceiver(t, "127.0.0.1:0", nil)
	s := newTestSyslog(t, SyslogConfig{URL: "tcp://" + r.addr()})
	ctx := context.Background()
	for i := range 5 {
		if err := s.Deliver(ctx, []Alert{numbered(i)}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the message", func() bool { return len(r.messages()) == i+1 })
		r.dropConns()
		time.Sleep(5 * time.Millisecond) // the FIN reaches the sink
	}
	var ids []string
	for _, m := range r.messages() {
		ids = append(ids, cefID(t, m))
	}
	checkOrder(t, ids, 0, 5)
}

// TestOutboxSyslogOutage: alerts enqueued while the syslog receiver is
// down arrive, in order, once it listens again, also across a restart of
// the outbox.
func TestOutboxSyslogOutage(t *testing.T) {
	r := newSyslogReceiver(t, "127.0.0.1:0", nil)
	addr := r.addr()
	r.close() // down: connections are refused
	dir := t.TempDir()
	var logs logBuffer
	open := func() *Outbox {
		s, err := NewSyslog(SyslogConfig{URL: "tcp://" + addr, Hostname: "vigil-1", DialTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		o, err := Open(dir, []Sink{s}, fastOptions(logs.logger()))
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	o := open()
	stop := running(t, o)
	for i := range 40 {
		if err := o.Enqueue(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "a failed attempt", func() bool { return !o.Stats().Sinks[0].FailingSince.IsZero() })
	stop()
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}

	o = open()
	defer o.Close()
	running(t, o)
	for i := 40; i < 60; i++ {
		if err := o.Enqueue(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	r = newSyslogReceiver(t, addr, nil)
	eventually(t, "60 messages", func() bool { return len(r.messages()) >= 60 })
	var ids []string
	for _, m := range r.messages() {
		ids = append(ids, cefID(t, m))
	}
	checkOrder(t, ids, 0, 60)
	eventually(t, "nothing queued", func() bool { return o.Stats().Sinks[0].Queued == 0 })
	if !strings.Contains(logs.String(), "delivery failing") || !strings.Contains(logs.String(), "delivery resumed") {
		t.Errorf("want the outage and the recovery logged:\n%s", logs.String())
	}
}
