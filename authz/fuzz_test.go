package authz

import (
	"bytes"
	"context"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vigil-iot/vigil/topology"
)

// Bits of FuzzParseRequest's mode argument.
const (
	fuzzXFCCInHeaderMap = 1 << iota // send headers as header_map (encode_raw_headers)
	fuzzXFCCInBoth                  // send them in both fields
	fuzzJSONBody                    // a JSON content type, with the extension as the body
	fuzzFormBody                    // a form content type, with the extension as the body
)

// FuzzParseRequest builds CheckRequests from fuzzed strings and checks that
// ParseRequest and BuildInput never panic, that a forwarded identity is
// always exactly one SPIFFE ID, that a host holds a ':' only as an IPv6
// address, and that BuildInput agrees with the plugin's protojson path.
func FuzzParseRequest(f *testing.F) {
	const dev = "spiffe://city.example/zone/north/device/slc-0042"
	for _, s := range []struct {
		principal, host, path, method, xfcc, ext string
		mode                                     uint8
	}{
		{"spiffe://city.example/zone/north/gateway/gw-1", "telemetry.city.example:443", "/api/v1/telemetry?batch=3", "POST", "By=spiffe://city.example/zone/north/gateway/gw-1;URI=" + dev, "telemetry", 0},
		{"spiffe://city.example/zone/north/gateway/gw-1", "[::1]:8443", "/a%2Fb/c?x=1&x=2", "GET", `Subject="CN=a,b;c=\"d\"";URI="` + dev + `"`, `{"lux": 1}`, fuzzJSONBody},
		{"", "Telemetry.City.Example", "/", "PUT", "URI=" + dev + ",URI=" + dev, "a=1&b=2", fuzzFormBody | fuzzXFCCInHeaderMap},
		{"x", "fe80::1", "*", "OPTIONS", "uri=" + dev + ";uri=" + dev, "", fuzzXFCCInBoth},
		{"x", "host:99999", "/%zz?a;b", "GET", `URI="unterminated`, "{", fuzzJSONBody},
		{"x", "[::1", "", "", "URI=spiffe://td", "", 0},
	} {
		f.Add(s.principal, s.host, s.path, s.method, s.xfcc, s.ext, s.mode)
	}
	f.Fuzz(func(t *testing.T, principal, host, path, method, xfcc, ext string, mode uint8) {
		h := &authv3.AttributeContext_HttpRequest{Method: method, Host: host, Path: path}
		headers := map[string]string{":authority": host}
		if xfcc != "" {
			headers[ForwardedClientCertHeader] = xfcc
		}
		switch {
		case mode&fuzzJSONBody != 0:
			headers["content-type"], h.Body = "application/json", ext
		case mode&fuzzFormBody != 0:
			headers["content-type"], h.Body = "application/x-www-form-urlencoded", ext
		}
		if mode&(fuzzXFCCInHeaderMap|fuzzXFCCInBoth) != 0 {
			h.HeaderMap = &corev3.HeaderMap{}
			for k, v := range headers {
				h.HeaderMap.Headers = append(h.HeaderMap.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
			}
		}
		if mode&fuzzXFCCInHeaderMap == 0 || mode&fuzzXFCCInBoth != 0 {
			h.Headers = headers
		}
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:            &authv3.AttributeContext_Peer{Principal: principal},
			Request:           &authv3.AttributeContext_Request{Http: h},
			ContextExtensions: map[string]string{ServiceExtension: ext},
		}}

		r, err := ParseRequest(req)
		if err == nil {
			if r.Forwarded != "" {
				if !strings.HasPrefix(r.Forwarded, "spiffe://") || strings.ContainsAny(r.Forwarded, ",;=\"\\ \t") {
					t.Errorf("Forwarded %q from XFCC %q is not a single spiffe:// URI", r.Forwarded, xfcc)
				}
				if err := checkSPIFFEID(r.Forwarded); err != nil {
					t.Errorf("Forwarded %q: %v", r.Forwarded, err)
				}
				if !strings.Contains(xfcc, r.Forwarded) {
					t.Errorf("Forwarded %q is not in XFCC %q", r.Forwarded, xfcc)
				}
			}
			if strings.Contains(r.Host, ":") {
				if a, err := netip.ParseAddr(r.Host); err != nil || !a.Is6() {
					t.Errorf("Host %q (from %q) has a ':' and is not an IPv6 address", r.Host, host)
				}
			}
			if r.Host != strings.ToLower(r.Host) {
				t.Errorf("Host %q is not lower case", r.Host)
			}
			if strings.ContainsAny(r.Path, "?#") {
				t.Errorf("Path %q keeps a query or fragment", r.Path)
			}
			if r.Principal != principal || r.Service != ext || r.Method != method {
				t.Errorf("ParseRequest changed a field it copies: %+v", r)
			}
		}

		in, err := BuildInput(req, nil)
		if err == nil && in == nil {
			t.Fatal("BuildInput returned neither a value nor an error")
		}
		// The plugin reads only the headers map, and protojson refuses
		// strings that are not UTF-8 (gRPC never delivers them).
		if mode&(fuzzXFCCInHeaderMap|fuzzXFCCInBoth) != 0 {
			return
		}
		for _, s := range []string{principal, host, path, method, xfcc, ext} {
			if !utf8.ValidString(s) {
				return
			}
		}
		want, werr := pluginInput(req, nil)
		switch {
		case (err == nil) != (werr == nil):
			t.Fatalf("BuildInput error %v, protojson path error %v", err, werr)
		case err == nil:
			if d := inputDiff("input", in, want); len(d) > 0 {
				t.Fatalf("BuildInput differs from the protojson path:\n  %s", strings.Join(d, "\n  "))
			}
		}
	})
}

// FuzzCheckAudit runs fuzzed requests through the whole Check path of a
// server with a real decision log: request → decision → log line →
// verify. Every line must verify and stay within MaxLogLine, whatever the
// request, and nothing may be allowed that is not a flow of the topology.
func FuzzCheckAudit(f *testing.F) {
	const dev = "spiffe://city.example/zone/north/device/aq-n1"
	f.Add(dev, "", "", "telemetry.city.example", "POST", "/api/v1/telemetry", "")
	f.Add("spiffe://city.example/zone/north/gateway/gw-north", "URI="+dev, "telemetry", "", "POST", "/api/v1/telemetry", "spiffe://city.example/zone/cloud/edge/e1")
	f.Add(dev, "", "", "telemetry.city.example", "POST", "/"+strings.Repeat("\x01", 70000), dev)
	f.Add(strings.Repeat("\x00", 5000), strings.Repeat("\"", 3000), strings.Repeat("\x7f", 3000), "h", "\x00", "/a/../b", "")
	snap, engine := hardeningState(f)
	f.Fuzz(func(t *testing.T, principal, xfcc, service, host, method, path, caller string) {
		logPath := filepath.Join(t.TempDir(), "decisions.log")
		l, err := OpenDecisionLog(DecisionLogConfig{Path: logPath, Logger: discardLogger()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx) }()
		s := NewServer(Config{Node: "n1", Snapshot: func() *topology.Snapshot { return snap }, Engine: engine,
			Log: l, Now: func() time.Time { return testNow }, RequireCaller: caller != "", Logger: quiet()})
		cctx := context.Background()
		if caller != "" {
			if _, err := url.Parse(caller); err == nil {
				cctx = callerContext(t, caller)
			}
		}
		resp, _ := s.Check(cctx, checkRequest(principal, xfcc, service, host, method, path))
		if resp.GetStatus().GetCode() == 0 {
			r, err := ParseRequest(checkRequest(principal, xfcc, service, host, method, path))
			if err != nil || topology.PathProblem(r.Path) != "" {
				t.Errorf("allowed a request that does not parse or has a path that is not normalised: %v", err)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
			if len(line) > MaxLogLine {
				t.Fatalf("line %d is %d bytes, over MaxLogLine %d", i+1, len(line), MaxLogLine)
			}
		}
		if _, err := VerifyDecisionLog(bytes.NewReader(data)); err != nil {
			t.Fatalf("the log of one decision does not verify: %v", err)
		}
	})
}
