package siem

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test -update rewrites it)\n--- got:\n%s\n--- want:\n%s", name, got, want)
	}
}

// testTime is the alerts' time in the golden files.
var testTime = time.Date(2026, 3, 14, 15, 9, 26, 535897000, time.UTC)

func sampleFinding() Alert {
	return Alert{
		Kind:       KindFinding,
		ID:         "f-0001",
		Time:       testTime,
		Device:     "slc-n1-001",
		DeviceKind: "device",
		SPIFFEID:   "spiffe://city.example/device/slc-n1-001",
		Zone:       "north",
		Class:      "streetlight",
		Gateway:    "gw-north-1",
		Owner:      "lighting-team",
		Detector:   "new-destination",
		Severity:   SeverityHigh,
		Risk:       72,
		Title:      `New destination | 203.0.113.9 \ exfil?`,
		Message:    "sent 4194304 bytes to a=b\\c\r\nsecond line\tend",
		IncidentID: "inc-7",
		Evidence:   map[string]string{"destination": "203.0.113.9:443", "bytes": "4194304", "path prefix": "/up=load"},
		Labels:     map[string]string{"owner": "lighting-team", "site": "n1"},
	}
}

func sampleIncident() Alert {
	return Alert{
		Kind:           KindIncident,
		ID:             "inc-7",
		Time:           testTime.Add(800 * time.Millisecond),
		Device:         "slc-n1-001",
		DeviceKind:     "device",
		SPIFFEID:       "spiffe://city.example/device/slc-n1-001",
		Zone:           "north",
		Class:          "streetlight",
		Gateway:        "gw-north-1",
		Owner:          "lighting-team",
		Severity:       SeverityCritical,
		Risk:           91,
		Title:          "slc-n1-001 quarantined",
		Message:        "risk 91 ≥ quarantineAt 80",
		IncidentStatus: IncidentOpen,
		Findings:       []string{"f-0001", "f-0002"},
		Actions:        []string{"quarantine", "evidence", "alert"},
		Labels:         map[string]string{"owner": "lighting-team"},
	}
}

// numbered is alert i of a test run: its ID says i, so receivers can check
// order.
func numbered(i int) Alert {
	return Alert{
		Kind:     KindFinding,
		ID:       fmt.Sprintf("a-%05d", i),
		Time:     testTime.Add(time.Duration(i) * time.Millisecond),
		Device:   "dev-" + strconv.Itoa(i%7),
		Detector: "rate-spike",
		Severity: SeverityMedium,
		Risk:     i % 100,
		Title:    "request rate spike",
	}
}

func numberOf(t *testing.T, id string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimPrefix(id, "a-"))
	if err != nil {
		t.Fatalf("unexpected alert ID %q", id)
	}
	return n
}

// checkOrder checks that ids (as received, possibly with repeats) hold
// alerts from..to-1 such that each alert first arrives after every alert
// before it: in order, no gaps, at least once.
func checkOrder(t *testing.T, ids []string, from, to int) {
	t.Helper()
	next := from
	for i, id := range ids {
		n := numberOf(t, id)
		switch {
		case n == next:
			next++
		case n > next:
			t.Fatalf("arrival %d is %s while %d has not arrived yet (a gap or reordering)", i, id, next)
		}
	}
	if next != to {
		t.Fatalf("received alerts %d…%d, want %d…%d", from, next-1, from, to-1)
	}
}

// logBuffer collects an outbox's logs.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fastOptions retry quickly, so that tests run in milliseconds.
func fastOptions(log *slog.Logger) Options {
	return Options{MinBackoff: 2 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Logger: log}
}

// running starts o.Run; the returned function stops it and waits.
func running(t *testing.T, o *Outbox) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return within 10 s of its context ending")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// eventually polls cond every few milliseconds for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(3 * time.Millisecond)
	}
}

// memSink keeps what it is given; fail makes it fail.
type memSink struct {
	name string
	fail atomic.Bool
	mu   sync.Mutex
	got  []Alert
}

func (m *memSink) Name() string { return m.name }

func (m *memSink) Deliver(ctx context.Context, alerts []Alert) error {
	if m.fail.Load() {
		return errors.New("memSink is down")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.got = append(m.got, alerts...)
	return nil
}

func (m *memSink) alerts() []Alert {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Alert(nil), m.got...)
}

func (m *memSink) ids() []string {
	var ids []string
	for _, a := range m.alerts() {
		ids = append(ids, a.ID)
	}
	return ids
}

// httpReceiver is a webhook or Alertmanager: it answers 503 while down,
// 400 to a body containing "poison", and keeps every accepted body.
type httpReceiver struct {
	srv      *httptest.Server
	down     atomic.Bool
	requests atomic.Int64
	mu       sync.Mutex
	bodies   [][]byte
	headers  []http.Header
	paths    []string
}

func newHTTPReceiver(t *testing.T) *httpReceiver {
	t.Helper()
	r := &httpReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		body, err := io.ReadAll(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		switch {
		case r.down.Load():
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		case bytes.Contains(body, []byte("poison")):
			http.Error(w, `{"error":"invalid event"}`, http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.bodies = append(r.bodies, body)
		r.headers = append(r.headers, req.Header.Clone())
		r.paths = append(r.paths, req.URL.Path)
		r.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// ocsfIDs are the finding_info.uid of every event accepted, in order.
func (r *httpReceiver) ocsfIDs(t *testing.T) []string {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for _, b := range r.bodies {
		var events []struct {
			FindingInfo struct {
				UID string `json:"uid"`
			} `json:"finding_info"`
		}
		if err := json.Unmarshal(b, &events); err != nil {
			t.Fatalf("webhook body is not a JSON array of events: %v\n%s", err, b)
		}
		for _, e := range events {
			ids = append(ids, e.FindingInfo.UID)
		}
	}
	return ids
}

// syslogReceiver accepts TCP (or TLS) connections and parses
// octet-counted frames strictly.
type syslogReceiver struct {
	t     *testing.T
	ln    net.Listener
	mu    sync.Mutex
	msgs  []string
	conns map[net.Conn]bool
	wg    sync.WaitGroup
	// accepted counts connections.
	accepted int
}

func newSyslogReceiver(t *testing.T, addr string, cfg *tls.Config) *syslogReceiver {
	t.Helper()
	var ln net.Listener
	var err error
	if cfg != nil {
		ln, err = tls.Listen("tcp", addr, cfg)
	} else {
		ln, err = net.Listen("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	r := &syslogReceiver{t: t, ln: ln, conns: make(map[net.Conn]bool)}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(r.close)
	return r
}

func (r *syslogReceiver) addr() string { return r.ln.Addr().String() }

func (r *syslogReceiver) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.conns[c] = true
		r.accepted++
		r.mu.Unlock()
		r.wg.Add(1)
		go r.serve(c)
	}
}

func (r *syslogReceiver) serve(c net.Conn) {
	defer r.wg.Done()
	defer c.Close()
	br := bufio.NewReader(c)
	for n := 0; ; n++ {
		msg, err := readFrame(br)
		if err != nil {
			// A handshake refused (by a test that expects it), the other side
			// closing, and the receiver closing are not framing errors.
			handshake := n == 0 && strings.Contains(err.Error(), "tls: ")
			if !handshake && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
				r.t.Errorf("syslog receiver: %v", err)
			}
			return
		}
		r.mu.Lock()
		r.msgs = append(r.msgs, msg)
		r.mu.Unlock()
	}
}

// readFrame reads one "MSG-LEN SP SYSLOG-MSG" frame (RFC 6587 §3.4.1).
func readFrame(br *bufio.Reader) (string, error) {
	head, err := br.ReadString(' ')
	if err != nil {
		if head == "" && errors.Is(err, io.EOF) {
			return "", io.EOF
		}
		return "", fmt.Errorf("frame header %q: %w", head, err)
	}
	digits := strings.TrimSuffix(head, " ")
	n, err := strconv.Atoi(digits)
	if err != nil || n <= 0 || digits[0] == '0' || len(digits) > 6 {
		return "", fmt.Errorf("bad frame length %q", digits)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(br, msg); err != nil {
		return "", fmt.Errorf("frame of %d bytes: %w", n, err)
	}
	return string(msg), nil
}

func (r *syslogReceiver) connections() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.accepted
}

func (r *syslogReceiver) messages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

// dropConns closes the receiver's side of every connection (as a restarted
// receiver would), keeping it listening.
func (r *syslogReceiver) dropConns() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		c.Close()
		delete(r.conns, c)
	}
}

func (r *syslogReceiver) close() {
	r.ln.Close()
	r.dropConns()
	r.wg.Wait()
}

// cefID is the externalId of a syslog message's CEF payload.
func cefID(t *testing.T, msg string) string {
	t.Helper()
	_, ext, ok := strings.Cut(msg, " externalId=")
	if !ok {
		t.Fatalf("no externalId in %q", msg)
	}
	id, _, _ := strings.Cut(ext, " ")
	return id
}

// testPKI is a CA with a server certificate for 127.0.0.1 and localhost,
// and a client certificate, written as PEM files in a temporary directory.
type testPKI struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
	pool                                                 *x509.CertPool
	server, client                                       tls.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey := newKey(t)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Vigil test CA"},
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
	ca, _ := x509.ParseCertificate(caDER)
	p := &testPKI{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.caFile = writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER)
	issue := func(name string, serial int64, usage x509.ExtKeyUsage, server bool) (certFile, keyFile string, cert tls.Certificate) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if server {
			tmpl.DNSNames = []string{"localhost"}
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return writePEM(t, dir, name+".pem", "CERTIFICATE", der), writePEM(t, dir, name+"-key.pem", "PRIVATE KEY", keyDER),
			tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	p.serverCert, p.serverKey, p.server = issue("server", 2, x509.ExtKeyUsageServerAuth, true)
	p.clientCert, p.clientKey, p.client = issue("client", 3, x509.ExtKeyUsageClientAuth, false)
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
