package xds

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vigil-iot/vigil/internal/spiffetest"
)

// alsFixture is a Server with its access log service on a real gRPC
// server, and the entries its handler got.
type alsFixture struct {
	srv  *Server
	als  *AccessLogs
	addr string

	mu  sync.Mutex
	got []*AccessEntry
}

// startALS runs the service, behind mutual TLS from ca (authenticating)
// when ca is not nil.
func startALS(t *testing.T, ca *spiffetest.CA) *alsFixture {
	t.Helper()
	src := &source{}
	src.p.Store(smartCitySnapshot(t, 3))
	srv, err := NewServer(Config{Source: src, NodeID: "vigil-1", Debounce: time.Hour, Authenticate: ca != nil})
	if err != nil {
		t.Fatal(err)
	}
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxRequestBytes)}
	if ca != nil {
		member := ca.Issue(t, td+"/vigil/node/vigil-1", "127.0.0.1")
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{member.TLS}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool,
		})))
	}
	g := grpc.NewServer(opts...)
	srv.Register(g)
	f := &alsFixture{srv: srv}
	f.als = srv.RegisterALS(g, func(e *AccessEntry) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.got = append(f.got, e)
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(func() { srv.Close(); g.Stop() })
	f.addr = lis.Addr().String()
	return f
}

func (f *alsFixture) entries() []*AccessEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*AccessEntry(nil), f.got...)
}

// stream sends msgs on one stream, holding the SVID id (none for "", a
// certificate without a URI SAN for noURI) under TLS from ca (plain text
// when ca is nil), and returns the stream's end.
func (f *alsFixture) stream(t *testing.T, ca *spiffetest.CA, id string, msgs ...*alsv3.StreamAccessLogsMessage) error {
	t.Helper()
	creds := insecure.NewCredentials()
	if ca != nil {
		cfg := &tls.Config{RootCAs: ca.Pool, ServerName: "127.0.0.1"}
		switch id {
		case "":
		case noURI:
			cfg.Certificates = []tls.Certificate{ca.Issue(t, "", "gw-north-1.city.example").TLS}
		default:
			cfg.Certificates = []tls.Certificate{ca.Issue(t, id).TLS}
		}
		creds = credentials.NewTLS(cfg)
	}
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	st, err := alsv3.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if err := st.Send(m); err != nil {
			break // the server ended the stream: CloseAndRecv says why
		}
	}
	_, err = st.CloseAndRecv()
	return err
}

func identifier(id, cluster string) *alsv3.StreamAccessLogsMessage_Identifier {
	return &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: id, Cluster: cluster, UserAgentName: "envoy"}, LogName: ALSLogName}
}

func httpLogs(id *alsv3.StreamAccessLogsMessage_Identifier, entries ...*accesslogdatav3.HTTPAccessLogEntry) *alsv3.StreamAccessLogsMessage {
	return &alsv3.StreamAccessLogsMessage{Identifier: id, LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries},
	}}
}

var start0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// logEntry is an entry as a gateway's Envoy sends it for a device's
// request: the device's certificate, the request, the authorizer's
// decision ID on the request and the reply.
func logEntry(peer, method, path string, code uint32, decision string, reqHeaders map[string]string) *accesslogdatav3.HTTPAccessLogEntry {
	m := corev3.RequestMethod(corev3.RequestMethod_value[method])
	return &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{
			StartTime: timestamppb.New(start0),
			Duration:  durationpb.New(12 * time.Millisecond),
			TlsProperties: &accesslogdatav3.TLSProperties{
				PeerCertificateProperties: &accesslogdatav3.TLSProperties_CertificateProperties{
					SubjectAltName: []*accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName{
						{San: &accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName_Dns{Dns: "device.example"}},
						{San: &accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: peer}},
					},
				},
				LocalCertificateProperties: &accesslogdatav3.TLSProperties_CertificateProperties{
					SubjectAltName: []*accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName{
						{San: &accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: td + "/zone/north/gateway/gw-north-1"}},
					},
				},
			},
			UpstreamCluster: "service-telemetry",
		},
		ProtocolVersion: accesslogdatav3.HTTPAccessLogEntry_HTTP2,
		Request: &accesslogdatav3.HTTPRequestProperties{
			RequestMethod:       m,
			Scheme:              "https",
			Authority:           "telemetry.city.example",
			Path:                path,
			RequestHeadersBytes: 200,
			RequestBodyBytes:    1000,
			RequestHeaders:      reqHeaders,
		},
		Response: &accesslogdatav3.HTTPResponseProperties{
			ResponseCode:         wrapperspb.UInt32(code),
			ResponseHeadersBytes: 100,
			ResponseBodyBytes:    50,
			ResponseHeaders:      map[string]string{decisionIDHeader: decision},
		},
	}
}

const device = td + "/zone/north/device/slc-n1-001"

// TestALSDeliversGatewayEntries: a gateway's stream, its identifier on the
// first message only, is converted entry by entry.
func TestALSDeliversGatewayEntries(t *testing.T) {
	f := startALS(t, nil)
	first := logEntry(device, "POST", "/v1/readings?x=1", 200, "d-1", map[string]string{decisionIDHeader: "d-1"})
	second := logEntry(device, "GET", "/v1/config", 403, "d-2", nil)
	second.CommonProperties.Duration = nil
	second.CommonProperties.TimeToLastDownstreamTxByte = durationpb.New(3 * time.Millisecond)
	second.CommonProperties.UpstreamCluster = ""
	tcp := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_TcpLogs{
		TcpLogs: &alsv3.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: []*accesslogdatav3.TCPAccessLogEntry{{}, {}}},
	}}
	if err := f.stream(t, nil, "", httpLogs(identifier(gw, "north"), first), httpLogs(nil, second), tcp); err != nil {
		t.Fatal(err)
	}
	got := f.entries()
	want := []AccessEntry{
		{At: start0, Node: gw, Zone: "north", PeerURI: device, Authority: "telemetry.city.example", Method: "POST",
			Path: "/v1/readings?x=1", Status: 200, RequestBytes: 1200, ResponseBytes: 150, Duration: 12 * time.Millisecond,
			Upstream: "service-telemetry", DecisionID: "d-1"},
		{At: start0, Node: gw, Zone: "north", PeerURI: device, Authority: "telemetry.city.example", Method: "GET",
			Path: "/v1/config", Status: 403, RequestBytes: 1200, ResponseBytes: 150, Duration: 3 * time.Millisecond,
			DecisionID: "d-2"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if *got[i] != want[i] {
			t.Errorf("entry %d:\n got %+v\nwant %+v", i, *got[i], want[i])
		}
	}
	if st := f.als.Stats(); st != (ALSStats{Streams: 1, Entries: 2, TCPIgnored: 2}) {
		t.Errorf("stats %+v", st)
	}
}

// TestALSReadsTheForwardedDevice: at a cloud edge the peer is the gateway
// and the device is the URI of the logged XFCC, read like the authorizer
// reads it; an unknown node's entries are delivered and counted.
func TestALSReadsTheForwardedDevice(t *testing.T) {
	f := startALS(t, nil)
	gwID := td + "/zone/north/gateway/gw-north-1"
	xfcc := func(v string) *accesslogdatav3.HTTPAccessLogEntry {
		return logEntry(gwID, "GET", "/", 200, "d", map[string]string{xfccHeader: v})
	}
	hash := strings.Repeat("ab", 32)
	msgs := httpLogs(identifier("edge-1", "cloud"),
		xfcc("By="+gwID+";Hash="+hash+";URI="+device),
		xfcc(`By="`+gwID+`";uri="`+device+`"`),
		xfcc("By="+gwID+";URI="+device+",By=x;URI="+device), // two elements
		xfcc("URI="+device+";URI="+device),                  // two URIs
		xfcc("Hash="+hash),                                  // none
		xfcc("URI="+device+";"),                             // an empty pair
		xfcc(`URI="`+device),                                // unterminated
		xfcc("URI="+device+strings.Repeat("x", maxALSXFCC)),
	)
	if err := f.stream(t, nil, "", msgs); err != nil {
		t.Fatal(err)
	}
	if err := f.stream(t, nil, "", httpLogs(identifier("gw-east-9", "east"), xfcc("URI="+device))); err != nil {
		t.Fatal(err)
	}
	got := f.entries()
	wantForwarded := []string{device, device, "", "", "", "", "", "", device}
	if len(got) != len(wantForwarded) {
		t.Fatalf("got %d entries, want %d", len(got), len(wantForwarded))
	}
	for i, e := range got {
		if e.Forwarded != wantForwarded[i] || e.PeerURI != gwID {
			t.Errorf("entry %d: forwarded %q, peer %q; want %q, %q", i, e.Forwarded, e.PeerURI, wantForwarded[i], gwID)
		}
	}
	if st := f.als.Stats(); st.Entries != 9 || st.UnknownNode != 1 || st.Clipped != 1 || st.Streams != 2 {
		t.Errorf("stats %+v: want 9 entries, 1 of an unknown node, 1 clipped, 2 streams", st)
	}
}

// TestALSRefusesStreamsWithoutANode: the identifier must come first.
func TestALSRefusesStreamsWithoutANode(t *testing.T) {
	f := startALS(t, nil)
	err := f.stream(t, nil, "", httpLogs(nil, logEntry(device, "GET", "/", 200, "d", nil)))
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("no identifier: %v, want InvalidArgument", err)
	}
	err = f.stream(t, nil, "", httpLogs(identifier(gw, "north"), logEntry(device, "GET", "/", 200, "d", nil)),
		httpLogs(identifier("gw-south-1", "south"), logEntry(device, "GET", "/", 200, "d", nil)))
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("a node switch: %v, want InvalidArgument", err)
	}
	if st := f.als.Stats(); st.Entries != 1 || st.Refused != 2 || st.Dropped != 2 {
		t.Errorf("stats %+v: want the first node's entry only, 2 refused streams, 2 dropped entries", st)
	}
}

// TestALSAuthenticatesTheNode: with proxy TLS, a stream is accepted only
// from the node's own SVID, and nothing of a refused one is delivered.
func TestALSAuthenticatesTheNode(t *testing.T) {
	ca := spiffetest.NewCA(t, "city.example")
	f := startALS(t, ca)
	entry := logEntry(device, "GET", "/", 200, "d", nil)
	for _, tc := range []struct {
		name, id, node, cluster string
		code                    codes.Code
	}{
		{"gateway as itself", td + "/zone/north/gateway/gw-north-1", gw, "north", codes.OK},
		{"gateway as itself, no cluster", td + "/zone/north/gateway/gw-north-1", gw, "", codes.OK},
		{"edge as itself", td + "/zone/cloud/edge/edge-1", "edge-1", "cloud", codes.OK},
		{"another gateway", td + "/zone/south/gateway/gw-south-1", gw, "north", codes.PermissionDenied},
		{"another zone's edge", td + "/zone/north/edge/edge-1", "edge-1", "cloud", codes.PermissionDenied},
		{"a device", device, "slc-n1-001", "north", codes.PermissionDenied},
		{"a service", td + "/zone/cloud/service/telemetry", "telemetry", "cloud", codes.PermissionDenied},
		{"no SPIFFE ID", noURI, gw, "north", codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.entries())
			err := f.stream(t, ca, tc.id, httpLogs(identifier(tc.node, tc.cluster), entry))
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
			delivered := len(f.entries()) - before
			if want := map[bool]int{true: 1, false: 0}[tc.code == codes.OK]; delivered != want {
				t.Errorf("%d entries delivered, want %d", delivered, want)
			}
		})
	}
	if st := f.als.Stats(); st.Streams != 3 || st.Refused != 5 || st.Entries != 3 || st.Dropped != 5 {
		t.Errorf("stats %+v", st)
	}
}

// TestALSBoundsEverything: long fields are cut to their limits, a message
// is read up to MaxALSEntriesPerMessage entries, and one over the
// server's MaxRecvMsgSize ends the stream.
func TestALSBoundsEverything(t *testing.T) {
	f := startALS(t, nil)
	long := logEntry(device+strings.Repeat("é", 3000), "GET", "/"+strings.Repeat("a", 20000), 200, strings.Repeat("d", 1000),
		map[string]string{xfccHeader: "URI=" + device + strings.Repeat("x", 3000)})
	long.Request.Authority = strings.Repeat("h", 5000)
	long.CommonProperties.UpstreamCluster = strings.Repeat("c", 1000)
	if err := f.stream(t, nil, "", httpLogs(identifier(gw+strings.Repeat("n", 1000), "north"), long)); err != nil {
		t.Fatal(err)
	}
	got := f.entries()
	if len(got) != 1 {
		t.Fatalf("got %d entries", len(got))
	}
	e := got[0]
	for _, fld := range []struct {
		name, v string
		limit   int
	}{
		{"path", e.Path, MaxALSPathBytes}, {"peer", e.PeerURI, maxALSID}, {"forwarded", e.Forwarded, maxALSID},
		{"authority", e.Authority, maxALSHost}, {"decision", e.DecisionID, maxALSName}, {"upstream", e.Upstream, maxALSName},
		{"node", e.Node, maxALSName},
	} {
		if len(fld.v) > fld.limit || !strings.Contains(fld.v, "…[cut: ") || !utf8.ValidString(fld.v) {
			t.Errorf("%s: %d bytes %q…, want at most %d, cut and marked", fld.name, len(fld.v), fld.v[:min(len(fld.v), 60)], fld.limit)
		}
	}
	if !strings.HasPrefix(e.Path, "/aaaa") || !strings.HasSuffix(e.Path, "[cut: 20001 bytes]") {
		t.Errorf("path %q… does not keep its start and full length", e.Path[:40])
	}

	many := make([]*accesslogdatav3.HTTPAccessLogEntry, MaxALSEntriesPerMessage+10)
	for i := range many {
		many[i] = &accesslogdatav3.HTTPAccessLogEntry{}
	}
	if err := f.stream(t, nil, "", httpLogs(identifier(gw, "north"), many...)); err != nil {
		t.Fatal(err)
	}
	if st := f.als.Stats(); st.Entries != 1+MaxALSEntriesPerMessage || st.Dropped != 10 || st.Clipped != 1 {
		t.Errorf("stats %+v: want %d entries, 10 dropped, 1 clipped", st, 1+MaxALSEntriesPerMessage)
	}

	huge := logEntry(device, "GET", "/"+strings.Repeat("a", MaxRequestBytes), 200, "d", nil)
	if err := f.stream(t, nil, "", httpLogs(identifier(gw, "north"), huge)); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a message over MaxRequestBytes: %v, want ResourceExhausted", err)
	}
}

// TestALSStreamsEndWithTheServer: Close ends open streams, so that a
// graceful stop of the gRPC server does not wait for Envoys.
func TestALSStreamsEndWithTheServer(t *testing.T) {
	f := startALS(t, nil)
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	st, err := alsv3.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(httpLogs(identifier(gw, "north"), logEntry(device, "GET", "/", 200, "d", nil))); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the entry is delivered", func() bool { return len(f.entries()) == 1 })
	f.srv.Close()
	if _, err := st.CloseAndRecv(); status.Code(err) != codes.Unavailable {
		t.Errorf("after Close: %v, want Unavailable", err)
	}
}

// FuzzALSConvert: any message converts without panicking, within the
// limits.
func FuzzALSConvert(f *testing.F) {
	seed := httpLogs(identifier(gw, "north"),
		logEntry(device, "POST", "/v1/readings", 200, "d-1", map[string]string{decisionIDHeader: "d-1", xfccHeader: `By=x;URI="` + device + `"`}),
		&accesslogdatav3.HTTPAccessLogEntry{})
	b, err := proto.Marshal(seed)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var msg alsv3.StreamAccessLogsMessage
		if proto.Unmarshal(data, &msg) != nil {
			return
		}
		c := convertALS(&msg, "n", "z", start0)
		if len(c.entries) > MaxALSEntriesPerMessage || c.clipped > len(c.entries) || c.dropped < 0 {
			t.Fatalf("converted %d entries, %d clipped, %d dropped", len(c.entries), c.clipped, c.dropped)
		}
		for _, e := range c.entries {
			if len(e.Path) > MaxALSPathBytes || len(e.PeerURI) > maxALSID || len(e.Forwarded) > maxALSID ||
				len(e.Authority) > maxALSHost || len(e.Method) > maxALSName || len(e.Upstream) > maxALSName ||
				len(e.DecisionID) > maxALSName || e.Duration < 0 || e.Status < 0 {
				t.Fatalf("entry out of bounds: %+v", e)
			}
		}
	})
}
