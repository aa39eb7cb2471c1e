// Package signalrpc is the wire protocol of vigil.monitor.v1.Signals, the
// gRPC service through which gateways report signals about their own
// devices, or about themselves (tamper, reboot, power-loss, …), on a
// member's proxy mutual-TLS port (the ext_authz port, --authz-addr),
// authenticated by their SVID instead of an API token. It is the gateways'
// counterpart of POST /v1/devices/{name}/signals and
// POST /v1/gateways/{name}/signals.
//
// The repository has no .proto of its own, so the service is described by
// hand (a grpc.ServiceDesc) and carries JSON in well-known messages, as
// internal/attestrpc does:
//
//	service vigil.monitor.v1.Signals {
//	  // {"subject": "device/NAME" | "gateway/NAME", "signal": NAME, "detail": TEXT, "at": RFC 3339}
//	  //   → api.SignalResponse {"accepted": true, "owner": MEMBER}
//	  rpc Report(google.protobuf.BytesValue) returns (google.protobuf.BytesValue);
//	}
//
// Each BytesValue's value is a UTF-8 JSON object of at most
// MaxRequestBytes: unknown fields are refused; "subject" names a device
// behind the calling gateway, or the calling gateway itself; "signal" is a
// name (lowercase letters, digits and '-', at most MaxSignalBytes) such as
// tamper or reboot; "detail" (optional, at most MaxDetailBytes) is free
// text; "at" (optional) is when the gateway saw it (the member's clock when
// absent or more than a minute ahead). There is no "gateway" field: the
// reporting gateway is the caller's verified SPIFFE ID. The response is the
// HTTP API's JSON.
//
// Failures are gRPC status codes: InvalidArgument (a malformed request),
// PermissionDenied (the caller is not a gateway of the topology, the
// device is not behind it, or the gateway named is not the caller),
// FailedPrecondition (the member serves the service only with proxy TLS,
// or runs no monitor), Unavailable (the member is not ready; retry) and
// ResourceExhausted (a request over MaxRequestBytes).
package signalrpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/internal/attestrpc"
	"github.com/vigil-iot/vigil/topology"
)

// ServiceName is the gRPC service's full name.
const ServiceName = "vigil.monitor.v1.Signals"

// ReportMethod is Report's full method name.
const ReportMethod = "/" + ServiceName + "/Report"

// Limits of a request.
const (
	// MaxRequestBytes bounds a request's JSON. The proxy port accepts
	// larger messages (for attestation evidence); a signal is refused
	// above this with ResourceExhausted.
	MaxRequestBytes = 16 << 10
	// MaxSignalBytes bounds the signal's name (as the HTTP API does).
	MaxSignalBytes = 64
	// MaxDetailBytes bounds the detail (as the HTTP API does).
	MaxDetailBytes = 1024
)

// ReportRequest is the JSON of a Report request.
type ReportRequest struct {
	// Subject is "device/NAME" or "gateway/NAME".
	Subject string    `json:"subject"`
	Signal  string    `json:"signal"`
	Detail  string    `json:"detail,omitempty"`
	At      time.Time `json:"at,omitzero"`
}

// Handler implements the service. The request it is given has been
// checked; its Gateway is empty (the handler knows the caller). Errors are
// gRPC status errors, *api.Error (mapped as Status maps it), or anything
// else (Internal).
type Handler interface {
	Report(ctx context.Context, sub topology.Subject, req api.SignalRequest) (api.SignalResponse, error)
}

// Register serves h as vigil.monitor.v1.Signals on s.
func Register(s grpc.ServiceRegistrar, h Handler) {
	s.RegisterService(&serviceDesc, h)
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*Handler)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Report", Handler: report},
	},
	Metadata: "internal/signalrpc (hand-written, no .proto)",
}

func report(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(wrapperspb.BytesValue)
	if err := dec(in); err != nil {
		return nil, err
	}
	run := func(ctx context.Context, req any) (any, error) {
		sub, sreq, err := decodeReport(req.(*wrapperspb.BytesValue).GetValue())
		if err != nil {
			return nil, err
		}
		out, err := srv.(Handler).Report(ctx, sub, sreq)
		if err != nil {
			return nil, Status(err)
		}
		data, err := json.Marshal(out)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encoding the response: %v", err)
		}
		return wrapperspb.Bytes(data), nil
	}
	if interceptor == nil {
		return run(ctx, in)
	}
	return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: ReportMethod}, run)
}

// decodeReport reads and checks a request's JSON; its errors are gRPC
// status errors (InvalidArgument, or ResourceExhausted for its size).
func decodeReport(body []byte) (topology.Subject, api.SignalRequest, error) {
	if len(body) > MaxRequestBytes {
		return topology.Subject{}, api.SignalRequest{}, status.Errorf(codes.ResourceExhausted,
			"request of %d bytes: at most %d are accepted", len(body), MaxRequestBytes)
	}
	var req ReportRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return topology.Subject{}, api.SignalRequest{}, status.Errorf(codes.InvalidArgument, "request: %v", err)
	}
	if dec.More() {
		return topology.Subject{}, api.SignalRequest{}, status.Error(codes.InvalidArgument, "request: data after its JSON object")
	}
	sub, err := check(req)
	if err != nil {
		return topology.Subject{}, api.SignalRequest{}, status.Error(codes.InvalidArgument, "request: "+err.Error())
	}
	return sub, api.SignalRequest{Signal: req.Signal, Detail: req.Detail, At: req.At}, nil
}

// check validates a request and returns its subject.
func check(req ReportRequest) (topology.Subject, error) {
	sub, err := ParseSubject(req.Subject)
	if err != nil {
		return sub, err
	}
	if len(req.Signal) > MaxSignalBytes || !topology.IsName(req.Signal) {
		return sub, fmt.Errorf("signal must be a name such as tamper or reboot (lowercase letters, digits and '-', at most %d)", MaxSignalBytes)
	}
	if len(req.Detail) > MaxDetailBytes {
		return sub, fmt.Errorf("detail is longer than %d bytes", MaxDetailBytes)
	}
	return sub, nil
}

// ParseSubject reads "device/NAME" or "gateway/NAME".
func ParseSubject(s string) (topology.Subject, error) {
	kind, name, ok := strings.Cut(s, "/")
	if !ok || !topology.IsName(name) || kind != "device" && kind != "gateway" {
		return topology.Subject{}, errors.New(`subject must be "device/NAME" or "gateway/NAME" (NAME a topology name)`)
	}
	k, err := topology.ParseKind(kind)
	return topology.Subject{Kind: k, Name: name}, err
}

// Status turns a handler's error into a gRPC status error: status errors
// stay as they are, an *api.Error's code maps to the closest gRPC code
// (bad_request → InvalidArgument, not_found → NotFound, forbidden →
// PermissionDenied, no_leader → Unavailable, timeout → DeadlineExceeded,
// rejected → FailedPrecondition), a context's end to DeadlineExceeded or
// Canceled, and anything else to Internal.
func Status(err error) error { return attestrpc.Status(err) }

// Client calls vigil.monitor.v1.Signals on a member's proxy port. Its
// errors are gRPC status errors (status.Code tells them apart), or a local
// error for a request it will not send.
type Client struct {
	cc grpc.ClientConnInterface
}

// NewClient uses cc, a connection with the gateway's SVID as its client
// certificate (attestrpc.ClientTLS configures one).
func NewClient(cc grpc.ClientConnInterface) *Client { return &Client{cc: cc} }

// Report sends req about subject, a device behind the calling gateway or
// the gateway itself. req.Gateway is not sent: the member takes the
// reporting gateway from the caller's SVID.
func (c *Client) Report(ctx context.Context, subject topology.Subject, req api.SignalRequest) (api.SignalResponse, error) {
	var out api.SignalResponse
	wire := ReportRequest{Subject: subject.String(), Signal: req.Signal, Detail: req.Detail, At: req.At}
	if _, err := check(wire); err != nil {
		return out, err
	}
	body, err := json.Marshal(wire)
	if err != nil {
		return out, err
	}
	if len(body) > MaxRequestBytes {
		return out, fmt.Errorf("request of %d bytes: the member accepts at most %d", len(body), MaxRequestBytes)
	}
	resp := new(wrapperspb.BytesValue)
	if err := c.cc.Invoke(ctx, ReportMethod, wrapperspb.Bytes(body), resp); err != nil {
		return out, err
	}
	if err := json.Unmarshal(resp.GetValue(), &out); err != nil {
		return out, fmt.Errorf("%s: response: %w", ReportMethod, err)
	}
	return out, nil
}
