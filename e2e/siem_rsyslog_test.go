package e2e_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/monitor/siem"
)

// TestSIEMRsyslog delivers alerts through the outbox and the syslog sink to
// a real rsyslogd (Debian's rsyslog and rsyslog-gnutls, which .ci/run
// installs), over plain TCP and over TLS (the gtls driver), both with
// octet-counted framing, and checks from rsyslog's own output that every
// message arrived once, in order, whole: the RFC 5424 header as rsyslog
// parsed it (hostname, app-name, msgid, facility, severity), the raw
// message byte for byte, and the parsed MSG equal to the CEF line. It then
// stops rsyslogd, enqueues more, starts it again and checks that those
// arrive too.
//
// Without rsyslogd the test skips, unless VIGIL_REQUIRE_RSYSLOG is set (as
// .ci/run sets it), when it fails.
func TestSIEMRsyslog(t *testing.T) {
	bin := rsyslogdPath(t)
	rs := newRsyslog(t, bin)
	rs.start(t)

	const hostname, version = "vigil-e2e-1", "e2e"
	for _, tc := range []struct {
		name, url, ca, out string
	}{
		{"tcp", "tcp://" + rs.tcpAddr, "", rs.tcpOut},
		{"tls", "tls://" + rs.tlsAddr, rs.caFile, rs.tlsOut},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink, err := siem.NewSyslog(siem.SyslogConfig{URL: tc.url, CAFile: tc.ca, Hostname: hostname, Version: version, DialTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			logs := &lockedWriter{}
			o, err := siem.Open(t.TempDir(), []siem.Sink{sink}, siem.Options{
				MinBackoff: 20 * time.Millisecond,
				MaxBackoff: 500 * time.Millisecond,
				Logger:     slog.New(slog.NewTextHandler(logs, nil)),
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- o.Run(ctx) }()
			t.Cleanup(func() {
				cancel()
				<-done
				o.Close()
				if t.Failed() {
					b, _ := os.ReadFile(rs.logFile)
					t.Logf("outbox log:\n%s\nrsyslogd's output:\n%s", logs, b)
				}
			})

			alerts := siemAlerts(tc.name, 0, 12)
			for _, a := range alerts {
				if err := o.Enqueue(a); err != nil {
					t.Fatal(err)
				}
			}
			checkRsyslogGot(t, tc.out, sink, alerts, hostname, version)

			if tc.name != "tcp" {
				return
			}
			// rsyslog goes away (closing our connection) and comes back:
			// what was enqueued meanwhile arrives after it, in order.
			rs.stop(t)
			more := siemAlerts(tc.name, 12, 6)
			for _, a := range more {
				if err := o.Enqueue(a); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, 30*time.Second, "a failed delivery while rsyslogd is down", func() bool {
				return !o.Stats().Sinks[0].FailingSince.IsZero()
			})
			rs.start(t)
			checkRsyslogGot(t, tc.out, sink, append(alerts, more...), hostname, version)
			if st := o.Stats().Sinks[0]; st.Dropped != 0 || st.Rejected != 0 {
				t.Errorf("outbox stats %+v", st)
			}
		})
	}
}

// siemAlerts are n alerts numbered from first, with everything CEF must
// escape, non-ASCII text, and one too large for a syslog message that the
// sink has to shorten.
func siemAlerts(run string, first, n int) []siem.Alert {
	base := time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)
	var out []siem.Alert
	for i := first; i < first+n; i++ {
		a := siem.Alert{
			Kind:       siem.KindFinding,
			ID:         fmt.Sprintf("%s-f-%03d", run, i),
			Time:       base.Add(time.Duration(i) * 1500 * time.Microsecond),
			Device:     fmt.Sprintf("slc-n1-%03d", i),
			DeviceKind: "device",
			SPIFFEID:   fmt.Sprintf("spiffe://city.example/device/slc-n1-%03d", i),
			Zone:       "north",
			Class:      "streetlight",
			Gateway:    "gw-north-1",
			Owner:      "lighting-team",
			Detector:   "new-destination",
			Severity:   []string{siem.SeverityLow, siem.SeverityMedium, siem.SeverityHigh, siem.SeverityCritical}[i%4],
			Risk:       (i * 17) % 101,
			Title:      `Exfiltration? | to 203.0.113.9 \ port 443`,
			Message:    "sent 4194304 bytes; key=value\nsecond line — ≥ baseline ×40",
			Evidence:   map[string]string{"destination": "203.0.113.9:443", "filter": "a=b|c\\d"},
		}
		switch i % 4 {
		case 1:
			a.Kind, a.Detector = siem.KindIncident, ""
			a.IncidentStatus = siem.IncidentOpen
			a.Actions = []string{"quarantine", "evidence", "alert"}
			a.Findings = []string{fmt.Sprintf("%s-f-%03d", run, i-1)}
		case 3:
			a.Message = strings.Repeat("payload to a new destination ", 400) // about 11 KiB
		}
		out = append(out, a)
	}
	return out
}

// checkRsyslogGot waits until rsyslog's output file has a line per alert
// and checks each against what the sink sends.
func checkRsyslogGot(t *testing.T, out string, sink *siem.Syslog, alerts []siem.Alert, hostname, version string) {
	t.Helper()
	var lines []string
	waitFor(t, 30*time.Second, fmt.Sprintf("%d messages in %s", len(alerts), filepath.Base(out)), func() bool {
		lines = readLines(t, out)
		return len(lines) >= len(alerts)
	})
	if len(lines) != len(alerts) {
		var short []string
		for _, l := range lines {
			short = append(short, clip(l))
		}
		t.Fatalf("%s has %d lines, want %d:\n%s", out, len(lines), len(alerts), strings.Join(short, "\n"))
	}
	for i, a := range alerts {
		f := strings.SplitN(lines[i], "\t", 7)
		if len(f) != 7 {
			t.Fatalf("line %d is not 7 tab-separated fields: %q", i+1, lines[i])
		}
		raw := string(sink.Format(a))
		if len(raw) > 8096 {
			t.Errorf("%s: message of %d bytes, over what rsyslog's default keeps (8096)", a.ID, len(raw))
		}
		cef := raw[strings.Index(raw, "CEF:0|"):]
		want := []string{hostname, "vigil", a.Kind, "20", fmt.Sprint(siem.SyslogSeverity(a.Severity)), raw, cef}
		for j, name := range []string{"hostname", "app-name", "msgid", "facility", "severity", "rawmsg", "msg"} {
			if f[j] != want[j] {
				t.Errorf("%s: rsyslog's %s is\n%q, want\n%q", a.ID, name, clip(f[j]), clip(want[j]))
			}
		}
		if !strings.Contains(cef, "externalId="+a.ID+" ") || !strings.HasPrefix(cef, "CEF:0|Vigil|Vigil|"+version+"|") {
			t.Errorf("%s: CEF payload %q", a.ID, cef)
		}
	}
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) <= 400 {
		return s
	}
	return s[:200] + " … " + s[len(s)-200:]
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rsyslogdPath finds Debian's rsyslogd, or skips (fails when
// VIGIL_REQUIRE_RSYSLOG is set).
func rsyslogdPath(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("rsyslogd")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/rsyslogd"); serr == nil {
			return "/usr/sbin/rsyslogd"
		}
		requireRsyslog(t, "no rsyslogd on PATH or in /usr/sbin")
	}
	return path
}

func requireRsyslog(t *testing.T, why string) {
	t.Helper()
	const how = "install the Debian packages rsyslog and rsyslog-gnutls (.ci/run does)"
	if os.Getenv("VIGIL_REQUIRE_RSYSLOG") != "" {
		t.Fatalf("%s, and VIGIL_REQUIRE_RSYSLOG is set: %s", why, how)
	}
	t.Skipf("%s: %s, or set VIGIL_REQUIRE_RSYSLOG=1 to make this a failure", why, how)
}

// rsyslog is an rsyslogd in the foreground with its own configuration and
// work directory: one imtcp input for plain TCP, one with the gtls
// (GnuTLS) stream driver for TLS, each writing what it receives to its own
// file.
type rsyslog struct {
	bin, dir, conf, pidFile, logFile string
	tcpAddr, tlsAddr                 string
	tcpOut, tlsOut                   string
	caFile                           string
	proc                             *harness.Process
}

func newRsyslog(t *testing.T, bin string) *rsyslog {
	t.Helper()
	dir := t.TempDir()
	rs := &rsyslog{
		bin:     bin,
		dir:     dir,
		conf:    filepath.Join(dir, "rsyslog.conf"),
		pidFile: filepath.Join(dir, "rsyslogd.pid"),
		logFile: filepath.Join(dir, "rsyslogd.log"),
		tcpOut:  filepath.Join(dir, "tcp.log"),
		tlsOut:  filepath.Join(dir, "tls.log"),
	}
	var err error
	if rs.tcpAddr, err = harness.FreeAddr(); err != nil {
		t.Fatal(err)
	}
	if rs.tlsAddr, err = harness.FreeAddr(); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := rs.writePKI(t)
	work := filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o700); err != nil {
		t.Fatal(err)
	}
	_, tcpPort, _ := net.SplitHostPort(rs.tcpAddr)
	_, tlsPort, _ := net.SplitHostPort(rs.tlsAddr)
	conf := fmt.Sprintf(`global(
  workDirectory="%s"
  defaultNetstreamDriverCAFile="%s"
  defaultNetstreamDriverCertFile="%s"
  defaultNetstreamDriverKeyFile="%s"
)
module(load="imtcp")
template(name="fields" type="string"
  string="%%hostname%%\t%%app-name%%\t%%msgid%%\t%%syslogfacility%%\t%%syslogseverity%%\t%%rawmsg%%\t%%msg%%\n")
ruleset(name="tcp") { action(type="omfile" file="%s" template="fields") }
ruleset(name="tls") { action(type="omfile" file="%s" template="fields") }
input(type="imtcp" address="127.0.0.1" port="%s" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="%s" ruleset="tls"
  streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
`, work, rs.caFile, certFile, keyFile, rs.tcpOut, rs.tlsOut, tcpPort, tlsPort)
	if err := os.WriteFile(rs.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, bin, "-N1", "-f", rs.conf).CombinedOutput(); err != nil {
		if strings.Contains(string(out), "gtls") {
			requireRsyslog(t, "rsyslogd cannot load its GnuTLS driver (rsyslog-gnutls): "+strings.TrimSpace(string(out)))
		}
		t.Fatalf("rsyslogd -N1 rejects the configuration: %v\n%s\n%s", err, out, conf)
	}
	t.Cleanup(func() {
		if rs.proc != nil {
			rs.stop(t)
		}
	})
	return rs
}

// start runs rsyslogd and waits until both inputs accept connections.
func (rs *rsyslog) start(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(rs.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(rs.bin, "-n", "-f", rs.conf, "-i", rs.pidFile)
	cmd.Dir = rs.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if rs.proc, err = harness.StartProcess(cmd); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "rsyslogd to listen", func() bool {
		if rs.proc.Exited() {
			b, _ := os.ReadFile(rs.logFile)
			t.Fatalf("rsyslogd exited: %v\n%s", rs.proc.ExitError(), b)
		}
		for _, addr := range []string{rs.tcpAddr, rs.tlsAddr} {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return false
			}
			c.Close()
		}
		return true
	})
}

// stop ends rsyslogd (SIGTERM, by its PID) and waits for it.
func (rs *rsyslog) stop(t *testing.T) {
	t.Helper()
	if _, err := rs.proc.Stop(15 * time.Second); err != nil {
		t.Errorf("stop rsyslogd: %v", err)
	}
	rs.proc = nil
}

// writePKI writes a CA and a server certificate for 127.0.0.1 and
// localhost (ECDSA P-256) as PEM files.
func (rs *rsyslog) writePKI(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Vigil e2e syslog CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		path := filepath.Join(rs.dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	rs.caFile = write("ca.pem", "CERTIFICATE", caDER)
	return write("server.pem", "CERTIFICATE", der), write("server-key.pem", "EC PRIVATE KEY", keyDER)
}

// lockedWriter serializes a log handler's writes.
type lockedWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
