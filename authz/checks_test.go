package authz

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"gopkg.in/yaml.v3"

	"github.com/vigil-iot/vigil/topology"
)

// The cases in testdata/checks/*.yaml are CheckRequests against
// testdata/topology.yaml with some runtime state, and what Vigil must
// answer. Each case runs on a fresh server (fresh rate limits) at a fixed
// time; "repeat: N" sends N identical requests first.

type caseState struct {
	Attested map[string]struct {
		Age      string `yaml:"age"`
		Firmware string `yaml:"firmware"`
	} `yaml:"attested"`
	Quarantined      []string `yaml:"quarantined"`
	ClearAttestation []string `yaml:"clear_attestation"`
	// Risk gives devices (or gateways) a risk score.
	Risk map[string]int `yaml:"risk"`
}

type checkCase struct {
	Name    string    `yaml:"name"`
	State   caseState `yaml:"state"`
	Repeat  int       `yaml:"repeat"`
	Request struct {
		Principal string            `yaml:"principal"`
		Caller    string            `yaml:"caller"` // the asking proxy's verified SPIFFE ID
		XFCC      string            `yaml:"xfcc"`
		Service   string            `yaml:"service"`
		Host      string            `yaml:"host"`
		Method    string            `yaml:"method"`
		Path      string            `yaml:"path"`
		Headers   map[string]string `yaml:"headers"`
	} `yaml:"request"`
	Want struct {
		Allowed         bool              `yaml:"allowed"`
		Status          int               `yaml:"status"`
		Code            string            `yaml:"code"`
		Reason          string            `yaml:"reason"` // a substring of the reason
		Subject         string            `yaml:"subject"`
		Gateway         string            `yaml:"gateway"`
		Body            string            `yaml:"body"`
		UpstreamHeaders map[string]string `yaml:"upstream_headers"`
		ResponseHeaders map[string]string `yaml:"response_headers"`
		DeniedHeaders   map[string]string `yaml:"denied_headers"`
		RemovedHeaders  []string          `yaml:"removed_headers"`
		// Risk is the risk the decision log must record.
		Risk int `yaml:"risk"`
	} `yaml:"want"`
}

type checkFile struct {
	Policy string `yaml:"policy"`
	// RequireCaller runs the server with Config.RequireCaller.
	RequireCaller bool        `yaml:"require_caller"`
	Query         string      `yaml:"query"`
	State         caseState   `yaml:"state"`
	Cases         []checkCase `yaml:"cases"`
}

var testNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// memLog keeps decisions for assertions.
type memLog struct {
	mu sync.Mutex
	d  []Decision
}

func (l *memLog) Record(d *Decision) { l.mu.Lock(); l.d = append(l.d, *d); l.mu.Unlock() }

func (l *memLog) last() Decision { l.mu.Lock(); defer l.mu.Unlock(); return l.d[len(l.d)-1] }

func testIndex(t testing.TB) *topology.Index {
	t.Helper()
	data, err := os.ReadFile("testdata/topology.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ix, err := topology.Load(data)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

func applyState(t testing.TB, ix *topology.Index, st *topology.State, cs caseState) *topology.State {
	t.Helper()
	updates := map[topology.Subject]*topology.SubjectState{}
	get := func(s topology.Subject) *topology.SubjectState {
		if u, ok := updates[s]; ok {
			return u
		}
		cur := topology.SubjectState{}
		if old := st.Get(s); old != nil {
			cur = *old
		}
		updates[s] = &cur
		return &cur
	}
	for name, a := range cs.Attested {
		age, err := time.ParseDuration(a.Age)
		if err != nil {
			t.Fatalf("attested %s: %v", name, err)
		}
		get(topology.DeviceSubject(name)).Attestation = &topology.Attestation{
			Method: "tpm", FirmwareVersion: a.Firmware,
			VerifiedAt: testNow.Add(-age), ExpiresAt: testNow.Add(-age).Add(48 * time.Hour),
		}
	}
	for _, name := range cs.ClearAttestation {
		get(topology.DeviceSubject(name)).Attestation = nil
	}
	for _, name := range cs.Quarantined {
		s := topology.DeviceSubject(name)
		if _, ok := ix.Device(name); !ok {
			s = topology.GatewaySubject(name)
		}
		get(s).Quarantine = &topology.Quarantine{Reason: "test quarantine", By: "tester", Since: testNow}
	}
	for name, score := range cs.Risk {
		s := topology.DeviceSubject(name)
		if _, ok := ix.Device(name); !ok {
			s = topology.GatewaySubject(name)
		}
		get(s).Risk = &topology.Risk{Score: score, UpdatedAt: testNow}
	}
	return st.With(updates)
}

func (c *checkCase) request() *authv3.CheckRequest {
	headers := maps.Clone(c.Request.Headers)
	if headers == nil {
		headers = map[string]string{}
	}
	if c.Request.XFCC != "" {
		headers["x-forwarded-client-cert"] = c.Request.XFCC
	}
	ext := map[string]string{}
	if c.Request.Service != "" {
		ext["vigil.service"] = c.Request.Service
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: c.Request.Principal},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: c.Request.Method, Path: c.Request.Path, Host: c.Request.Host, Headers: headers,
		}},
		ContextExtensions: ext,
	}}
}

func TestCheckCases(t *testing.T) {
	files, _ := filepath.Glob("testdata/checks/*.yaml")
	if len(files) == 0 {
		t.Fatal("no case files")
	}
	ix := testIndex(t)
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var cf checkFile
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		dec.KnownFields(true)
		if err := dec.Decode(&cf); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		// Vigil's default policy runs in Go (decision 0009); every case
		// runs with the Go form and with OPA evaluating the Rego, and
		// must give the same answer both ways.
		for _, via := range []string{"go", "rego"} {
			engine, err := NewEngine(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if cf.Policy != "" {
				if via == "go" {
					continue // a custom policy has no Go form
				}
				p, err := LoadDir(context.Background(), filepath.Join("testdata", cf.Policy), cf.Query)
				if err != nil {
					t.Fatalf("%s: policy: %v", file, err)
				}
				engine.Use(p)
			} else if via == "rego" {
				engine.Use(engine.Current().WithRego())
			}
			base := applyState(t, ix, topology.NewState(), cf.State)
			for _, c := range cf.Cases {
				t.Run(via+"/"+strings.TrimSuffix(filepath.Base(file), ".yaml")+"/"+c.Name, func(t *testing.T) {
					snap := topology.NewSnapshot(42, 1, ix, applyState(t, ix, base, c.State))
					log := &memLog{}
					s := NewServer(Config{Node: "n1", Snapshot: func() *topology.Snapshot { return snap }, Engine: engine,
						Log: log, Now: func() time.Time { return testNow }, RequireCaller: cf.RequireCaller})
					ctx := callerContext(t, c.Request.Caller)
					for i := range c.Repeat {
						resp, _ := s.Check(ctx, c.request())
						if resp.GetStatus().GetCode() != int32(codes.OK) {
							t.Fatalf("request %d of %d before the checked one was refused: %s", i+1, c.Repeat, log.last().Reason)
						}
					}
					resp, err := s.Check(ctx, c.request())
					if err != nil {
						t.Fatalf("Check returned an error: %v", err)
					}
					if d := log.last(); cf.RequireCaller && d.Caller != c.Request.Caller {
						t.Errorf("decision records caller %q, want %q", d.Caller, c.Request.Caller)
					}
					checkResponse(t, &c, resp, log.last(), engine.Current())
				})
			}
		}
	}
}

func checkResponse(t *testing.T, c *checkCase, resp *authv3.CheckResponse, d Decision, p *Policy) {
	t.Helper()
	code := codes.Code(resp.GetStatus().GetCode())
	if allowed := code == codes.OK; allowed != c.Want.Allowed {
		t.Fatalf("allowed = %v (code %v, reason %q), want %v", allowed, code, d.Reason, c.Want.Allowed)
	}
	// YAML names codes as the gRPC spec does (RESOURCE_EXHAUSTED); grpc-go
	// prints them as ResourceExhausted.
	if c.Want.Code != "" && !strings.EqualFold(code.String(), strings.ReplaceAll(c.Want.Code, "_", "")) {
		t.Errorf("gRPC code = %v, want %s", code, c.Want.Code)
	}
	if d.HTTPStatus != c.Want.Status {
		t.Errorf("logged HTTP status = %d, want %d", d.HTTPStatus, c.Want.Status)
	}
	if !strings.Contains(d.Reason, c.Want.Reason) {
		t.Errorf("reason = %q, want it to contain %q", d.Reason, c.Want.Reason)
	}
	if d.Revision != 42 && c.Request.Principal != "" {
		t.Errorf("decision revision = %d, want 42", d.Revision)
	}
	if c.Want.Subject != "" && d.Subject != c.Want.Subject {
		t.Errorf("decision subject = %q, want %q", d.Subject, c.Want.Subject)
	}
	if c.Want.Gateway != "" && d.Gateway != c.Want.Gateway {
		t.Errorf("decision gateway = %q, want %q", d.Gateway, c.Want.Gateway)
	}
	if d.Risk != c.Want.Risk {
		t.Errorf("decision risk = %d, want %d", d.Risk, c.Want.Risk)
	}
	if d.PolicyHash != "" && d.PolicyHash != p.Hash {
		t.Errorf("decision policy hash = %s, want %s", d.PolicyHash, p.Hash)
	}
	if c.Want.Allowed {
		ok := resp.GetOkResponse()
		if got := headerMap(ok.GetHeaders()); got["x-vigil-decision-id"] != d.ID {
			t.Errorf("upstream x-vigil-decision-id = %q, want %q", got["x-vigil-decision-id"], d.ID)
		}
		wantHeaders(t, "upstream", ok.GetHeaders(), c.Want.UpstreamHeaders)
		wantHeaders(t, "response", ok.GetResponseHeadersToAdd(), c.Want.ResponseHeaders)
		for _, h := range c.Want.RemovedHeaders {
			if !strings.Contains(strings.Join(ok.GetHeadersToRemove(), ","), h) {
				t.Errorf("headers to remove %v lack %q", ok.GetHeadersToRemove(), h)
			}
		}
		return
	}
	denied := resp.GetDeniedResponse()
	if got := int(denied.GetStatus().GetCode()); got != c.Want.Status {
		t.Errorf("denied HTTP status = %d, want %d", got, c.Want.Status)
	}
	wantHeaders(t, "denied", denied.GetHeaders(), c.Want.DeniedHeaders)
	if c.Want.Body != "" {
		if denied.GetBody() != c.Want.Body {
			t.Errorf("body = %q, want %q", denied.GetBody(), c.Want.Body)
		}
		return
	}
	var body struct {
		DecisionID string `json:"decision_id"`
		Reason     string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(denied.GetBody()), &body); err != nil || body.DecisionID != d.ID || body.Reason != d.Reason {
		t.Errorf("denied body %q, want {decision_id: %q, reason: %q} (%v)", denied.GetBody(), d.ID, d.Reason, err)
	}
}

func headerMap(hs []*corev3.HeaderValueOption) map[string]string {
	m := map[string]string{}
	for _, h := range hs {
		m[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return m
}

func wantHeaders(t *testing.T, where string, hs []*corev3.HeaderValueOption, want map[string]string) {
	t.Helper()
	got := headerMap(hs)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s header %s = %q, want %q (all: %v)", where, k, got[k], v, got)
		}
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// callerContext is a gRPC handler's context for a caller that presented a
// verified certificate with the SPIFFE ID id (no peer at all when "").
func callerContext(t *testing.T, id string) context.Context {
	t.Helper()
	if id == "" {
		return context.Background()
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{URIs: []*url.URL{u}}
	return peer.NewContext(context.Background(), &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}},
	})
}
