package signalrpc

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/topology"
)

func TestDecodeReport(t *testing.T) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	sub, req, err := decodeReport([]byte(`{"subject":"device/slc-1","signal":"tamper","detail":"enclosure opened","at":"2025-03-01T12:00:00Z"}`))
	if err != nil || sub != topology.DeviceSubject("slc-1") ||
		req != (api.SignalRequest{Signal: "tamper", Detail: "enclosure opened", At: at}) {
		t.Fatalf("decoded %v %+v %v", sub, req, err)
	}
	sub, req, err = decodeReport([]byte(` {"subject":"gateway/gw-1","signal":"reboot"} `))
	if err != nil || sub != topology.GatewaySubject("gw-1") || req != (api.SignalRequest{Signal: "reboot"}) {
		t.Fatalf("decoded %v %+v %v", sub, req, err)
	}
	for _, tc := range []struct{ body, want string }{
		{``, "EOF"},
		{`[]`, "cannot unmarshal"},
		{`{"subject":"device/slc-1","signal":"tamper"`, "unexpected EOF"},
		{`{"subject":"device/slc-1","signal":"tamper","gateway":"gw-2"}`, "unknown field"},
		{`{"subject":"device/slc-1","signal":"tamper"} {}`, "data after"},
		{`{"subject":"device/slc-1","signal":"Tamper"}`, "signal must be a name"},
		{`{"subject":"device/slc-1","signal":""}`, "signal must be a name"},
		{`{"subject":"device/slc-1"}`, "signal must be a name"},
		{`{"subject":"device/slc-1","signal":"` + strings.Repeat("a", 65) + `"}`, "signal must be a name"},
		{`{"subject":"device/slc-1","signal":"tamper","detail":"` + strings.Repeat("d", MaxDetailBytes+1) + `"}`, "detail is longer"},
		{`{"subject":"service/telemetry","signal":"tamper"}`, "subject must be"},
		{`{"subject":"slc-1","signal":"tamper"}`, "subject must be"},
		{`{"subject":"device/","signal":"tamper"}`, "subject must be"},
		{`{"subject":"device/a/b","signal":"tamper"}`, "subject must be"},
		{`{"signal":"tamper"}`, "subject must be"},
		{`{"subject":"device/slc-1","signal":"tamper","at":"yesterday"}`, "cannot parse"},
	} {
		_, _, err := decodeReport([]byte(tc.body))
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.80s: %v, want InvalidArgument mentioning %q", tc.body, err, tc.want)
		}
	}
	big := `{"subject":"device/slc-1","signal":"tamper","detail":"` + strings.Repeat(" ", MaxRequestBytes) + `"}`
	if _, _, err := decodeReport([]byte(big)); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a request over MaxRequestBytes: %v", err)
	}
}

// FuzzDecodeReport: decoding never panics, every error is InvalidArgument
// or ResourceExhausted, and what is accepted satisfies the limits.
func FuzzDecodeReport(f *testing.F) {
	f.Add([]byte(`{"subject":"device/slc-1","signal":"tamper","detail":"enclosure opened","at":"2025-03-01T12:00:00Z"}`))
	f.Add([]byte(`{"subject":"gateway/gw-1","signal":"reboot"}`))
	f.Add([]byte(`{"subject":"device/slc-1","signal":"tamper","x":1}`))
	f.Add([]byte(`{"subject":"device/\u0000","signal":"a-","at":null}`))
	f.Add([]byte(`{"subject":"gateway/gw-1","signal":"power-loss","detail":"\ud800"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		sub, req, err := decodeReport(body)
		if err != nil {
			if c := status.Code(err); c != codes.InvalidArgument && c != codes.ResourceExhausted {
				t.Fatalf("%q: %v", body, err)
			}
			return
		}
		if len(body) > MaxRequestBytes || sub.Kind != topology.KindDevice && sub.Kind != topology.KindGateway ||
			!topology.IsName(sub.Name) || !topology.IsName(req.Signal) || len(req.Signal) > MaxSignalBytes ||
			len(req.Detail) > MaxDetailBytes || !utf8.ValidString(req.Detail) || req.Gateway != "" {
			t.Fatalf("%q accepted as %v %+v", body, sub, req)
		}
	})
}

type fakeHandler struct {
	sub topology.Subject
	req api.SignalRequest
	err error
}

func (h *fakeHandler) Report(_ context.Context, sub topology.Subject, req api.SignalRequest) (api.SignalResponse, error) {
	h.sub, h.req = sub, req
	if h.err != nil {
		return api.SignalResponse{}, h.err
	}
	return api.SignalResponse{Accepted: true, Owner: "n2"}, nil
}

// TestClientAndServer: a Report through gRPC reaches the handler as
// decoded; the handler's errors become status codes; the client refuses
// requests it would not send.
func TestClientAndServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	h := &fakeHandler{}
	Register(s, h)
	go s.Serve(ln)
	defer s.Stop()
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := NewClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	resp, err := c.Report(ctx, topology.DeviceSubject("slc-1"), api.SignalRequest{Signal: "tamper", Detail: "lid", Gateway: "gw-9", At: at})
	if err != nil || resp != (api.SignalResponse{Accepted: true, Owner: "n2"}) {
		t.Fatalf("Report: %+v %v", resp, err)
	}
	if h.sub != topology.DeviceSubject("slc-1") || h.req != (api.SignalRequest{Signal: "tamper", Detail: "lid", At: at}) {
		t.Fatalf("the handler got %v %+v", h.sub, h.req)
	}

	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{&api.Error{Code: api.CodeNotFound, Message: "no device"}, codes.NotFound},
		{&api.Error{Code: api.CodeForbidden, Message: "no"}, codes.PermissionDenied},
		{&api.Error{Code: api.CodeNoLeader, Message: "later"}, codes.Unavailable},
		{status.Error(codes.FailedPrecondition, "the monitor is off"), codes.FailedPrecondition},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{net.ErrClosed, codes.Internal},
	} {
		h.err = tc.err
		if _, err := c.Report(ctx, topology.GatewaySubject("gw-1"), api.SignalRequest{Signal: "reboot"}); status.Code(err) != tc.code {
			t.Errorf("handler error %v: %v, want %v", tc.err, err, tc.code)
		}
	}
	h.err = nil

	err = cc.Invoke(ctx, ReportMethod, wrapperspb.Bytes([]byte(`{"subject":"device/slc-1","signal":"tamper","extra":1}`)), new(wrapperspb.BytesValue))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("an unknown field: %v", err)
	}
	for _, bad := range []struct {
		sub topology.Subject
		req api.SignalRequest
	}{
		{topology.ServiceSubject("telemetry"), api.SignalRequest{Signal: "tamper"}},
		{topology.DeviceSubject("slc-1"), api.SignalRequest{Signal: "not a name"}},
		{topology.DeviceSubject("slc-1"), api.SignalRequest{Signal: "tamper", Detail: strings.Repeat("d", MaxDetailBytes+1)}},
	} {
		h.sub = topology.Subject{}
		if _, err := c.Report(ctx, bad.sub, bad.req); err == nil || status.Code(err) != codes.Unknown || h.sub != (topology.Subject{}) {
			t.Errorf("the client sent %v %+v: %v", bad.sub, bad.req, err)
		}
	}
}
