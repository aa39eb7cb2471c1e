package fleetsim

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Names on the wire, as Vigil's authorizer and xDS define them (authz and
// xds are not imported; the tests check these against them).
const (
	// ServiceExtension is the ext_authz context extension a gateway's
	// route sets to name the destination service.
	ServiceExtension = "vigil.service"
	// DecisionIDHeader is the authorizer's decision ID header.
	DecisionIDHeader = "x-vigil-decision-id"
	// ALSLogName is the log_name of Vigil's Envoys' access log streams.
	ALSLogName = "vigil"
)

// request is one HTTP request a simulated device sends through its
// gateway.
type request struct {
	dev          *Device
	host, method string
	path         string
	body         int64 // request body bytes (Content-Length)
	respBody     int64 // the upstream's response body, when allowed
	attack       bool
}

// outcome is how the gateway answered a request.
type outcome struct {
	checked    bool   // ext_authz was asked
	local      string // the gateway's own reply (local*), when not checked
	allowed    bool
	status     int
	reason     string // the authorizer's reason for a deny
	decisionID string
	service    string // the route's service
	err        error  // the Check failed (transport)
}

// requestHeaderBytes approximates the request's header block as Envoy
// counts it (request_headers_bytes).
func requestHeaderBytes(r *request) uint64 {
	n := len(r.method) + len(r.path) + len(r.host) + 160 // :scheme, user-agent, content-type, x-request-id, …
	if r.body > 0 {
		n += len("content-length") + len(strconv.FormatInt(r.body, 10))
	}
	return uint64(n)
}

// userAgent is what a simulated device says it is.
func userAgent(d *Device) string { return d.Class + "-firmware/sim" }

// checkRequest is the CheckRequest a gateway's Envoy sends for r: the
// device is the peer it verified (attributes.source.principal, the URI SAN
// of the device's certificate), the gateway's own certificate is the
// destination's; the gateway keeps x-forwarded-client-cert out of its
// Check (docs/envoy.md), so none is sent. service is the route's
// vigil.service context extension ("" when no route names one).
func checkRequest(r *request, gatewayID, service, requestID string, now time.Time) *authv3.CheckRequest {
	headers := map[string]string{
		":authority": r.host, ":method": r.method, ":path": r.path, ":scheme": "https",
		"user-agent": userAgent(r.dev), "x-request-id": requestID, "x-forwarded-proto": "https",
	}
	size := int64(-1) // Envoy: unknown without a content-length
	if r.body > 0 {
		size = r.body
		headers["content-length"] = strconv.FormatInt(r.body, 10)
		headers["content-type"] = "application/json"
	}
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Principal: r.dev.SPIFFEID},
		Destination: &authv3.AttributeContext_Peer{Principal: gatewayID},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(now),
			Http: &authv3.AttributeContext_HttpRequest{
				Id: requestID, Method: r.method, Headers: headers, Path: r.path, Host: r.host,
				Scheme: "https", Protocol: "HTTP/1.1", Size: size,
			},
		},
	}}
	if service != "" {
		req.Attributes.ContextExtensions = map[string]string{ServiceExtension: service}
	}
	return req
}

// readCheck reads the authorizer's answer into o.
func readCheck(resp *authv3.CheckResponse, o *outcome) {
	o.checked = true
	if codes.Code(resp.GetStatus().GetCode()) == codes.OK {
		o.allowed, o.status = true, 200
		for _, h := range resp.GetOkResponse().GetResponseHeadersToAdd() {
			if h.GetHeader().GetKey() == DecisionIDHeader {
				o.decisionID = h.GetHeader().GetValue()
			}
		}
		return
	}
	d := resp.GetDeniedResponse()
	o.status = int(d.GetStatus().GetCode())
	if o.status == 0 {
		o.status = 403
	}
	for _, h := range d.GetHeaders() {
		if h.GetHeader().GetKey() == DecisionIDHeader {
			o.decisionID = h.GetHeader().GetValue()
		}
	}
	var body struct {
		Reason string `json:"reason"`
	}
	if json.Unmarshal([]byte(d.GetBody()), &body) == nil && body.Reason != "" {
		o.reason = body.Reason
	} else {
		o.reason = resp.GetStatus().GetMessage()
	}
}

// accessEntry is the HTTP access log entry the gateway's Envoy sends for
// r answered as o: the device's certificate is the downstream peer's
// (tls_properties.peer_certificate_properties URI SAN), the gateway's the
// local one; x-vigil-decision-id is logged on the response (the
// authorizer sets it on every answer) and, when allowed, on the request.
func accessEntry(r *request, o *outcome, gatewayID, requestID string, start time.Time, took time.Duration) *accesslogdatav3.HTTPAccessLogEntry {
	reqHeaders := map[string]string{}
	respHeaders := map[string]string{}
	if r.body > 0 { // logged by the gateway's access log (content-length)
		reqHeaders["content-length"] = strconv.FormatInt(r.body, 10)
	}
	if o.decisionID != "" {
		respHeaders[DecisionIDHeader] = o.decisionID
		if o.allowed {
			reqHeaders[DecisionIDHeader] = o.decisionID
		}
	}
	// A local reply or a denial is sent when the headers arrive: the body
	// is never read. An allowed request is forwarded whole.
	var body, respBody uint64
	details := "ext_authz_denied"
	upstream := ""
	switch {
	case o.local != "":
		respBody, details = uint64(localBody[o.local]), o.local
	case o.allowed:
		body, respBody, details, upstream = uint64(max(r.body, 0)), uint64(max(r.respBody, 0)), "via_upstream", "svc-"+o.service
	default:
		respBody = uint64(len(`{"decision_id":"","reason":""}`) + len(o.decisionID) + len(o.reason))
	}
	method := corev3.RequestMethod(corev3.RequestMethod_value[r.method])
	return &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{
			StartTime: timestamppb.New(start),
			TlsProperties: &accesslogdatav3.TLSProperties{
				TlsVersion: accesslogdatav3.TLSProperties_TLSv1_3,
				PeerCertificateProperties: &accesslogdatav3.TLSProperties_CertificateProperties{
					SubjectAltName: []*accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName{
						{San: &accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: r.dev.SPIFFEID}},
					},
				},
				LocalCertificateProperties: &accesslogdatav3.TLSProperties_CertificateProperties{
					SubjectAltName: []*accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName{
						{San: &accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: gatewayID}},
					},
				},
			},
			TimeToLastDownstreamTxByte: durationpb.New(took),
			Duration:                   durationpb.New(took),
			UpstreamCluster:            upstream,
		},
		ProtocolVersion: accesslogdatav3.HTTPAccessLogEntry_HTTP11,
		Request: &accesslogdatav3.HTTPRequestProperties{
			RequestMethod: method, Scheme: "https", Authority: r.host, Path: r.path,
			UserAgent: userAgent(r.dev), RequestId: requestID,
			RequestHeadersBytes: requestHeaderBytes(r), RequestBodyBytes: body,
			RequestHeaders: reqHeaders,
		},
		Response: &accesslogdatav3.HTTPResponseProperties{
			ResponseCode:         wrapperspb.UInt32(uint32(o.status)),
			ResponseHeadersBytes: 120, ResponseBodyBytes: respBody,
			ResponseHeaders: respHeaders, ResponseCodeDetails: details,
		},
	}
}

// Flushing, as Envoy's gRPC access logger does it: every second, or when
// about 16 KiB of entries are buffered.
const (
	alsFlushInterval = time.Second
	alsFlushEntries  = 64
	alsMaxPending    = 4096 // entries kept while a stream is down; older ones are lost
	alsRetry         = 2 * time.Second
)

// alsStream is one simulated gateway's access log stream to one member.
type alsStream struct {
	gw     *gatewayModel
	addr   string
	client alsv3.AccessLogServiceClient

	mu      sync.Mutex
	pending []*accesslogdatav3.HTTPAccessLogEntry
	lost    uint64

	// Only the flusher touches these.
	stream  grpc.ClientStreamingClient[alsv3.StreamAccessLogsMessage, alsv3.StreamAccessLogsResponse]
	cancel  context.CancelFunc
	retryAt time.Time
}

// add buffers an entry and reports whether the buffer is due.
func (a *alsStream) add(e *accesslogdatav3.HTTPAccessLogEntry) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.pending) >= alsMaxPending {
		a.pending = a.pending[1:]
		a.lost++
	}
	a.pending = append(a.pending, e)
	return len(a.pending) >= alsFlushEntries
}

// flush sends what is buffered, opening the stream when needed: its first
// message carries the identifier (node.id the gateway, node.cluster its
// zone, log_name "vigil"). It returns how many entries it sent.
func (a *alsStream) flush(ctx context.Context) (int, error) {
	a.mu.Lock()
	batch := a.pending
	a.pending = nil
	a.mu.Unlock()
	if len(batch) == 0 {
		return 0, nil
	}
	requeue := func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.pending = append(batch, a.pending...)
		if over := len(a.pending) - alsMaxPending; over > 0 {
			a.pending = a.pending[over:]
			a.lost += uint64(over)
		}
	}
	msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch}}}
	if a.stream == nil {
		if time.Now().Before(a.retryAt) {
			requeue()
			return 0, nil
		}
		sctx, cancel := context.WithCancel(ctx)
		st, err := a.client.StreamAccessLogs(sctx)
		if err != nil {
			cancel()
			a.retryAt = time.Now().Add(alsRetry)
			requeue()
			return 0, alsError(a.addr, a.gw.name, err)
		}
		a.stream, a.cancel = st, cancel
		msg.Identifier = identifier(a.gw)
	}
	if err := a.stream.Send(msg); err != nil {
		_, rerr := a.stream.CloseAndRecv() // the status the member ended the stream with
		if rerr != nil {
			err = rerr
		}
		a.close()
		a.retryAt = time.Now().Add(alsRetry)
		requeue()
		return 0, alsError(a.addr, a.gw.name, err)
	}
	return len(batch), nil
}

func identifier(gw *gatewayModel) *alsv3.StreamAccessLogsMessage_Identifier {
	return &alsv3.StreamAccessLogsMessage_Identifier{
		Node:    &corev3.Node{Id: gw.name, Cluster: gw.zone, UserAgentName: "envoy"},
		LogName: ALSLogName,
	}
}

// end closes the stream after a last flush.
func (a *alsStream) end(ctx context.Context) error {
	_, err := a.flush(ctx)
	if a.stream != nil {
		if _, cerr := a.stream.CloseAndRecv(); cerr != nil && err == nil {
			err = alsError(a.addr, a.gw.name, cerr)
		}
		a.close()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lost += uint64(len(a.pending))
	a.pending = nil
	return err
}

func (a *alsStream) close() {
	if a.cancel != nil {
		a.cancel()
	}
	a.stream, a.cancel = nil, nil
}

// plainHint explains a member refusing the simulator's plain gRPC.
const plainHint = "vigil sim speaks plain gRPC without a client certificate: it is for members started without --proxy-tls"

func alsError(addr, gw string, err error) error {
	return fmt.Errorf("access log stream of %s to %s: %w%s", gw, addr, err, hintFor(err))
}

// hintFor adds plainHint to the errors a member with proxy TLS gives.
func hintFor(err error) string {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.Unavailable, codes.DeadlineExceeded:
		return " (" + plainHint + ")"
	}
	return ""
}

// refused reports whether err is a member refusing the simulator (as
// opposed to a request failing on its own).
func refused(err error) bool {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		return true
	}
	return false
}
