// Package attestrpc is the wire protocol of vigil.attest.v1.Attestation,
// the gRPC service through which gateways submit attestation evidence for
// their own devices on a member's proxy mutual-TLS port (the ext_authz
// port, --authz-addr), authenticated by their SVID instead of an API token.
//
// The repository has no .proto of its own, so the service is described by
// hand (a grpc.ServiceDesc) and carries JSON in well-known messages:
//
//	service vigil.attest.v1.Attestation {
//	  // {"device": NAME} → api.ChallengeResponse {"nonce": "<64 hex>", "expires": "<RFC 3339>"}
//	  rpc Challenge(google.protobuf.BytesValue) returns (google.protobuf.BytesValue);
//	  // {"device": NAME, "evidence": {…}} → api.AttestResponse {"revision": N, "attestation": {…}}
//	  rpc Attest(google.protobuf.BytesValue) returns (google.protobuf.BytesValue);
//	}
//
// Each BytesValue's value is a UTF-8 JSON object: the request shapes above
// (unknown fields refused; "evidence" is the evidence document exactly as
// the body of POST /v1/devices/{name}/attestations), and the responses are
// the HTTP API's JSON. BytesValue rather than google.protobuf.Struct keeps
// the evidence byte for byte (its digest is recorded) and its integers
// exact (Struct turns every number into a double).
//
// Failures are gRPC status codes: InvalidArgument (a malformed request or
// evidence, a bad or expired nonce, a class that needs no attestation),
// NotFound, AlreadyExists (the nonce was already used: a replay),
// PermissionDenied (the caller may not attest that device),
// FailedPrecondition (the member serves the service only with proxy TLS),
// Unavailable (no leader, or the member is not ready; retry) and
// ResourceExhausted (a request over MaxRequestBytes, refused by gRPC).
package attestrpc

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
)

// ServiceName is the gRPC service's full name.
const ServiceName = "vigil.attest.v1.Attestation"

// Full method names.
const (
	ChallengeMethod = "/" + ServiceName + "/Challenge"
	AttestMethod    = "/" + ServiceName + "/Attest"
)

// MaxRequestBytes bounds one request on the wire. It is the proxy port's
// limit (authz.MaxCheckRequestBytes, which gRPC enforces before anything
// is read), the same 256 KiB as attest.MaxEvidenceBytes: evidence sent this
// way may use all of it but the few bytes of the envelope.
const MaxRequestBytes = attest.MaxEvidenceBytes

// maxDeviceName bounds the device name of a request (a DNS label is 63).
const maxDeviceName = 253

// ChallengeRequest is the JSON of a Challenge request.
type ChallengeRequest struct {
	Device string `json:"device"`
}

// AttestRequest is the JSON of an Attest request.
type AttestRequest struct {
	Device   string          `json:"device"`
	Evidence json.RawMessage `json:"evidence"`
}

// Handler implements the service. Errors are gRPC status errors, *api.Error
// (mapped as Status maps it), or anything else (Internal).
type Handler interface {
	Challenge(ctx context.Context, device string) (api.ChallengeResponse, error)
	Attest(ctx context.Context, device string, evidence []byte) (api.AttestResponse, error)
}

// Register serves h as vigil.attest.v1.Attestation on s.
func Register(s grpc.ServiceRegistrar, h Handler) {
	s.RegisterService(&serviceDesc, h)
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*Handler)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Challenge", Handler: unary(ChallengeMethod, challenge)},
		{MethodName: "Attest", Handler: unary(AttestMethod, attestOne)},
	},
	Metadata: "internal/attestrpc (hand-written, no .proto)",
}

// unary adapts a JSON-in, JSON-out handler to a gRPC method handler.
func unary(method string, call func(context.Context, Handler, []byte) (any, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		in := new(wrapperspb.BytesValue)
		if err := dec(in); err != nil {
			return nil, err
		}
		run := func(ctx context.Context, req any) (any, error) {
			out, err := call(ctx, srv.(Handler), req.(*wrapperspb.BytesValue).GetValue())
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
		return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: method}, run)
	}
}

func challenge(ctx context.Context, h Handler, body []byte) (any, error) {
	var req ChallengeRequest
	if err := decodeStrict(body, &req); err != nil {
		return nil, err
	}
	if err := checkDevice(req.Device); err != nil {
		return nil, err
	}
	return h.Challenge(ctx, req.Device)
}

func attestOne(ctx context.Context, h Handler, body []byte) (any, error) {
	var req AttestRequest
	if err := decodeStrict(body, &req); err != nil {
		return nil, err
	}
	if err := checkDevice(req.Device); err != nil {
		return nil, err
	}
	if err := checkEvidence(req.Evidence); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return h.Attest(ctx, req.Device, req.Evidence)
}

func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return status.Errorf(codes.InvalidArgument, "request: %v", err)
	}
	if dec.More() {
		return status.Error(codes.InvalidArgument, "request: data after its JSON object")
	}
	return nil
}

func checkDevice(name string) error {
	if name == "" || len(name) > maxDeviceName {
		return status.Errorf(codes.InvalidArgument, "request: a device name of 1 to %d characters is required", maxDeviceName)
	}
	return nil
}

// checkEvidence requires a JSON object within attest.MaxEvidenceBytes.
func checkEvidence(ev []byte) error {
	if len(ev) > attest.MaxEvidenceBytes {
		return fmt.Errorf("evidence is %d bytes; at most %d are accepted", len(ev), attest.MaxEvidenceBytes)
	}
	if t := bytes.TrimSpace(ev); len(t) == 0 || t[0] != '{' || !json.Valid(t) {
		return errors.New("evidence must be a JSON object (the evidence document)")
	}
	return nil
}

// Status turns a handler's error into a gRPC status error: status errors
// stay as they are, an *api.Error's code maps to the closest gRPC code
// (bad_request → InvalidArgument, not_found → NotFound, replay →
// AlreadyExists, forbidden → PermissionDenied, no_leader → Unavailable,
// timeout → DeadlineExceeded, rejected → FailedPrecondition), a context's
// end to DeadlineExceeded or Canceled, and anything else to Internal.
func Status(err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok {
		return s.Err()
	}
	var ae *api.Error
	switch {
	case errors.As(err, &ae):
		return status.Error(codeOf(ae.Code), ae.Message)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, "internal error; see the member's log")
}

func codeOf(apiCode string) codes.Code {
	switch apiCode {
	case api.CodeBadRequest, api.CodeBadDocument, api.CodeInvalidDocument:
		return codes.InvalidArgument
	case api.CodeNotFound:
		return codes.NotFound
	case api.CodeReplay:
		return codes.AlreadyExists
	case api.CodeForbidden:
		return codes.PermissionDenied
	case api.CodeNoLeader:
		return codes.Unavailable
	case api.CodeTimeout:
		return codes.DeadlineExceeded
	case api.CodeRejected:
		return codes.FailedPrecondition
	}
	return codes.Internal
}

// Client calls vigil.attest.v1.Attestation on a member's proxy port. Its
// errors are gRPC status errors (status.Code tells them apart), or a local
// error for a request it will not send.
type Client struct {
	cc grpc.ClientConnInterface
}

// NewClient uses cc, a connection with the gateway's SVID as its client
// certificate (ClientTLS).
func NewClient(cc grpc.ClientConnInterface) *Client { return &Client{cc: cc} }

// Challenge asks for a fresh nonce for device.
func (c *Client) Challenge(ctx context.Context, device string) (api.ChallengeResponse, error) {
	var out api.ChallengeResponse
	return out, c.call(ctx, ChallengeMethod, ChallengeRequest{Device: device}, &out)
}

// Attest submits evidence (the JSON evidence document) for device.
func (c *Client) Attest(ctx context.Context, device string, evidence []byte) (api.AttestResponse, error) {
	var out api.AttestResponse
	if err := checkEvidence(evidence); err != nil {
		return out, err
	}
	return out, c.call(ctx, AttestMethod, AttestRequest{Device: device, Evidence: evidence}, &out)
}

func (c *Client) call(ctx context.Context, method string, req, out any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	// The message adds a few bytes of framing to the JSON.
	if len(body)+8 > MaxRequestBytes {
		return fmt.Errorf("request of %d bytes: the member accepts at most %d", len(body), MaxRequestBytes)
	}
	resp := new(wrapperspb.BytesValue)
	if err := c.cc.Invoke(ctx, method, wrapperspb.Bytes(body), resp); err != nil {
		return err
	}
	if err := json.Unmarshal(resp.GetValue(), out); err != nil {
		return fmt.Errorf("%s: response: %w", method, err)
	}
	return nil
}

// ClientTLS is the transport configuration of a gateway calling a member:
// cert (the gateway's SVID) as client certificate, and the member's
// certificate verified against roots (the trust bundle) for the address
// dialled and required to be a Vigil member of trustDomain
// (spiffe://<trustDomain>/vigil/node/<id>), as Envoy's ext_authz cluster
// requires.
func ClientTLS(cert tls.Certificate, roots *x509.CertPool, trustDomain string) *tls.Config {
	prefix := "spiffe://" + trustDomain + "/vigil/node/"
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the member presented no certificate")
			}
			uris := cs.PeerCertificates[0].URIs
			if len(uris) != 1 || !strings.HasPrefix(uris[0].String(), prefix) || len(uris[0].String()) == len(prefix) {
				return fmt.Errorf("the server's certificate is not a Vigil member's SVID (%s<id>)", prefix)
			}
			return nil
		},
	}
}
