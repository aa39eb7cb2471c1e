package xds

import (
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/internal/peerid"
)

// AccessEntry is one HTTP request an Envoy (a gateway or a cloud edge)
// logged over gRPC ALS, reduced to what the monitor needs. No string is
// longer than its limit (MaxALSPathBytes for Path, and a few hundred bytes
// for the others, 2 KiB for SPIFFE IDs): a longer value is cut at a
// character boundary and ends with "…[cut: N bytes]".
type AccessEntry struct {
	// At is when the request started (the entry's start_time), or when
	// the member received the entry if Envoy sent no valid start time.
	At time.Time
	// Node is the Envoy's node.id and Zone its node.cluster, from the
	// first message of the stream. With Server's Authenticate the
	// stream's client certificate was checked to be that node's own;
	// without it they are what the client said. Either way the node may
	// be none of the topology (ALSStats.UnknownNode counts those entries).
	Node, Zone string
	// PeerURI is the first URI SAN of the downstream peer's certificate
	// (the principal Envoy gives ext_authz): at a gateway the device's
	// SPIFFE ID, at a cloud edge the gateway's. "" without mutual TLS.
	PeerURI string
	// Forwarded is the URI a logged x-forwarded-client-cert request header
	// names, read as the authorizer reads it (exactly one element with
	// exactly one URI, else ""): at a cloud edge, the device its gateway
	// forwarded. Gateways do not log the header (their device is PeerURI).
	Forwarded string
	// Authority (:authority, after Envoy stripped the port), Method (""
	// for a method Envoy's RequestMethod enum does not name) and Path
	// (with the query) of the request.
	Authority, Method, Path string
	// Status is the HTTP status sent downstream; 0 when there was none
	// (the downstream went away first).
	Status int
	// RequestBytes is the request's header and body bytes Envoy received
	// from downstream (request_headers_bytes + request_body_bytes);
	// ResponseBytes the response's it sent (response_headers_bytes +
	// response_body_bytes). Framing and TLS overhead are not counted.
	RequestBytes, ResponseBytes uint64
	// DeclaredBytes is the request's content-length header, when logged
	// and a number: what it meant to send, also when the gateway answered
	// before reading the body.
	DeclaredBytes uint64
	// Duration is from the request's first byte to the response's last
	// (the entry's duration, else time_to_last_downstream_tx_byte); 0 when
	// Envoy sent neither.
	Duration time.Duration
	// Upstream is the cluster the request was sent to (a service's),
	// else the upstream host's address; "" when it went nowhere (a local
	// reply: RBAC, rate limit, ext_authz, no route).
	Upstream string
	// DecisionID is the authorizer's decision ID: the logged
	// x-vigil-decision-id response header (the authorizer sets it on
	// every answer, replacing any other), else the request header (the
	// authorizer sets it on allowed requests; when no Check ran, a
	// client may have sent it).
	DecisionID string
}

// Limits on what one access log stream can make a member process or hold.
const (
	// MaxALSEntriesPerMessage is how many HTTP entries of one message are
	// converted; the rest are dropped (ALSStats.Dropped). Envoy sends a
	// message every second or at 16 KiB of entries, a few dozen of them.
	MaxALSEntriesPerMessage = 512
	// MaxALSPathBytes bounds AccessEntry.Path, as authz.MaxPathBytes
	// bounds the path the authorizer decides on.
	MaxALSPathBytes = 8 << 10

	maxALSName = 256     // node, zone, method, upstream, decision ID
	maxALSHost = 512     // authority (a DNS name is at most 253 bytes)
	maxALSID   = 2 << 10 // PeerURI, Forwarded (SPIFFE IDs: 2048 at most)
	maxALSXFCC = 4 << 10 // a longer XFCC is no gateway's and is not read
	clipMarker = 40      // room for clipALS's marker
)

// ALSStats counts what the access log service received since it was
// registered.
type ALSStats struct {
	// Streams accepted (whose first message named a node that the
	// stream's identity may be).
	Streams uint64
	// Refused streams: no node in the first message, a node that changed
	// within the stream, or (with Authenticate) a client certificate that
	// is not the node's own. Nothing of a refused message is delivered.
	Refused uint64
	// Entries delivered to the handler.
	Entries uint64
	// UnknownNode counts the delivered entries whose node is no gateway or
	// cloud edge of the topology at the time.
	UnknownNode uint64
	// Clipped counts the delivered entries with a field cut to its limit
	// (or an x-forwarded-client-cert too long to read).
	Clipped uint64
	// Dropped HTTP entries: beyond MaxALSEntriesPerMessage in a message,
	// or in the message that got its stream refused.
	Dropped uint64
	// TCPIgnored counts TCP entries (Vigil configures no TCP access log).
	TCPIgnored uint64
}

// AccessLogs is the access log service (envoy.service.accesslog.v3
// AccessLogService) of a Server: Envoy's gRPC access loggers stream their
// HTTP entries to it, and it hands each, converted, to its handler.
type AccessLogs struct {
	alsv3.UnimplementedAccessLogServiceServer

	s      *Server
	handle func(*AccessEntry)
	now    func() time.Time

	streams, refused, entries, unknown, clipped, dropped, tcp atomic.Uint64
}

// RegisterALS adds the access log service to g, the gRPC server that
// serves s (the xDS port, where the bootstrap's XDSCluster leads, with
// its MaxRecvMsgSize bounding a message), and returns it for its Stats.
//
// handle gets every HTTP entry, one at a time per stream, on the
// stream's goroutine, and from several streams at once: it must not block
// (queue the entry and return; the entry is its to keep, and shares no
// memory with the message). A nil handle discards the entries (they are
// still counted).
//
// When s authenticates (Config.Authenticate), a stream whose first
// message names a node that the client certificate may not act as is
// refused (PermissionDenied, or Unauthenticated without a SPIFFE ID), by
// the rule that admits xDS streams. Streams end when s is closed.
func (s *Server) RegisterALS(g *grpc.Server, handle func(*AccessEntry)) *AccessLogs {
	a := &AccessLogs{s: s, handle: handle, now: s.cfg.Clock.Now}
	alsv3.RegisterAccessLogServiceServer(g, a)
	return a
}

// Stats returns the counters.
func (a *AccessLogs) Stats() ALSStats {
	return ALSStats{
		Streams: a.streams.Load(), Refused: a.refused.Load(), Entries: a.entries.Load(),
		UnknownNode: a.unknown.Load(), Clipped: a.clipped.Load(), Dropped: a.dropped.Load(), TCPIgnored: a.tcp.Load(),
	}
}

// StreamAccessLogs serves one Envoy's stream until it ends, or the server
// is closed.
func (a *AccessLogs) StreamAccessLogs(stream grpc.ClientStreamingServer[alsv3.StreamAccessLogsMessage, alsv3.StreamAccessLogsResponse]) error {
	done := make(chan error, 1)
	// Receiving runs on its own goroutine so that Close ends the stream
	// (and a graceful stop of the gRPC server does not wait for Envoys,
	// which never end theirs); once this returns, its Recv fails.
	go func() { done <- a.serve(stream) }()
	select {
	case err := <-done:
		return err
	case <-a.s.ctx.Done():
		return status.Error(codes.Unavailable, "xds: the server is closing")
	}
}

func (a *AccessLogs) serve(stream grpc.ClientStreamingServer[alsv3.StreamAccessLogsMessage, alsv3.StreamAccessLogsResponse]) error {
	ctx := stream.Context()
	msg, err := stream.Recv()
	if err != nil {
		return endOf(stream, err)
	}
	// The identifier comes with the first message only (als.proto:
	// "Identifier data that will only be sent in the first message on
	// the stream").
	n := msg.GetIdentifier().GetNode()
	if n.GetId() == "" {
		a.refuse(msg)
		a.s.log.Warn("access log stream refused: its first message names no node", "peer", peerid.Addr(ctx))
		return status.Error(codes.InvalidArgument, "als: the first message must carry an identifier naming the node")
	}
	// Only Envoys log: whatever the user agent says, the node must be a
	// gateway or an edge (never a service, as a proxyless node may be).
	node := Node{ID: n.GetId(), Cluster: n.GetCluster()}
	if err := a.s.admit(peerid.FromContext(ctx), peerid.Addr(ctx), node); err != nil {
		a.refuse(msg)
		return err
	}
	a.streams.Add(1)
	nodeName, _ := clipALS(node.ID, maxALSName)
	zone, _ := clipALS(node.Cluster, maxALSName)
	for {
		if id := msg.GetIdentifier(); id != nil && (id.GetNode().GetId() != node.ID || id.GetNode().GetCluster() != node.Cluster) {
			a.refuse(msg)
			a.s.log.Warn("access log stream refused: it changed its node", "peer", peerid.Addr(ctx), "node", nodeName, "to", id.GetNode().GetId())
			return status.Error(codes.InvalidArgument, "als: a stream's node may not change")
		}
		a.deliver(msg, node, nodeName, zone)
		if msg, err = stream.Recv(); err != nil {
			return endOf(stream, err)
		}
	}
}

// endOf ends a stream whose Recv failed: a client that closed its side
// gets the (empty) response.
func endOf(stream grpc.ClientStreamingServer[alsv3.StreamAccessLogsMessage, alsv3.StreamAccessLogsResponse], err error) error {
	if errors.Is(err, io.EOF) {
		return stream.SendAndClose(&alsv3.StreamAccessLogsResponse{})
	}
	return err
}

func (a *AccessLogs) refuse(msg *alsv3.StreamAccessLogsMessage) {
	a.refused.Add(1)
	a.dropped.Add(uint64(len(msg.GetHttpLogs().GetLogEntry())))
	a.tcp.Add(uint64(len(msg.GetTcpLogs().GetLogEntry())))
}

// deliver converts msg's entries and hands them to the handler.
func (a *AccessLogs) deliver(msg *alsv3.StreamAccessLogsMessage, node Node, nodeName, zone string) {
	c := convertALS(msg, nodeName, zone, a.now())
	a.tcp.Add(uint64(c.tcp))
	a.dropped.Add(uint64(c.dropped))
	if len(c.entries) == 0 {
		return
	}
	a.entries.Add(uint64(len(c.entries)))
	a.clipped.Add(uint64(c.clipped))
	if kind, err := Classify(a.s.current().Index(), node); err != nil || kind != KindGateway && kind != KindEdge {
		a.unknown.Add(uint64(len(c.entries)))
	}
	if a.handle == nil {
		return
	}
	for _, e := range c.entries {
		a.handle(&e) // each its own copy: keeping one keeps no other
	}
}

// converted is what convertALS made of one message.
type converted struct {
	entries []AccessEntry
	// clipped entries (of entries), dropped HTTP entries, ignored TCP ones
	clipped, dropped, tcp int
}

// convertALS converts the HTTP entries of one message (at most
// MaxALSEntriesPerMessage) of node's stream; now stands for a missing
// start time. It reads any message without panicking.
func convertALS(msg *alsv3.StreamAccessLogsMessage, node, zone string, now time.Time) converted {
	c := converted{tcp: len(msg.GetTcpLogs().GetLogEntry())}
	logs := msg.GetHttpLogs().GetLogEntry()
	if len(logs) > MaxALSEntriesPerMessage {
		c.dropped = len(logs) - MaxALSEntriesPerMessage
		logs = logs[:MaxALSEntriesPerMessage]
	}
	c.entries = make([]AccessEntry, len(logs))
	for i, e := range logs {
		if convertEntry(e, &c.entries[i], node, zone, now) {
			c.clipped++
		}
	}
	return c
}

// convertEntry fills out from e and reports whether a field was cut.
func convertEntry(e *accesslogdatav3.HTTPAccessLogEntry, out *AccessEntry, node, zone string, now time.Time) (cut bool) {
	common, req, resp := e.GetCommonProperties(), e.GetRequest(), e.GetResponse()
	clip := func(s string, limit int) string {
		s, c := clipALS(s, limit)
		cut = cut || c
		return s
	}
	out.Node, out.Zone = node, zone
	out.At = now
	if ts := common.GetStartTime(); ts != nil && ts.CheckValid() == nil {
		out.At = ts.AsTime()
	}
	for _, san := range common.GetTlsProperties().GetPeerCertificateProperties().GetSubjectAltName() {
		if uri := san.GetUri(); uri != "" {
			out.PeerURI = clip(uri, maxALSID)
			break
		}
	}
	if xfcc, ok := req.GetRequestHeaders()[xfccHeader]; ok {
		if len(xfcc) > maxALSXFCC {
			cut = true
		} else {
			out.Forwarded = clip(forwardedURI(xfcc), maxALSID)
		}
	}
	out.Authority = clip(req.GetAuthority(), maxALSHost)
	if m := req.GetRequestMethod(); m != corev3.RequestMethod_METHOD_UNSPECIFIED {
		out.Method = clip(corev3.RequestMethod_name[int32(m)], maxALSName) // "" for a number it does not name
	}
	out.Path = clip(req.GetPath(), MaxALSPathBytes)
	out.Status = int(resp.GetResponseCode().GetValue())
	out.RequestBytes = addSat(req.GetRequestHeadersBytes(), req.GetRequestBodyBytes())
	out.ResponseBytes = addSat(resp.GetResponseHeadersBytes(), resp.GetResponseBodyBytes())
	if cl, ok := req.GetRequestHeaders()[contentLengthHeader]; ok && len(cl) <= 20 {
		out.DeclaredBytes, _ = strconv.ParseUint(cl, 10, 64)
	}
	d := common.GetDuration()
	if d == nil {
		d = common.GetTimeToLastDownstreamTxByte()
	}
	if d != nil {
		out.Duration = max(d.AsDuration(), 0)
	}
	out.Upstream = common.GetUpstreamCluster()
	if sa := common.GetUpstreamRemoteAddress().GetSocketAddress(); out.Upstream == "" && sa != nil {
		out.Upstream = net.JoinHostPort(clip(sa.GetAddress(), maxALSName), strconv.FormatUint(uint64(sa.GetPortValue()), 10))
	}
	out.Upstream = clip(out.Upstream, maxALSName)
	id, ok := resp.GetResponseHeaders()[decisionIDHeader]
	if !ok && out.Status < 400 {
		// An allowed request carries the authorizer's ID upstream. A
		// refusal's ID is only the one on the reply: a device can send
		// the request header itself, to pass the gateway's own refusals
		// off as decided ones.
		id = req.GetRequestHeaders()[decisionIDHeader]
	}
	out.DecisionID = clip(id, maxALSName)
	return cut
}

func addSat(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return ^uint64(0)
}

// clipALS returns s if it has at most limit bytes, and otherwise its
// first bytes, cut at a character boundary, followed by a marker with the
// full length ("…[cut: 3000000 bytes]"), in at most limit bytes, sharing
// no memory with s (which is a message's, not to be kept alive).
func clipALS(s string, limit int) (string, bool) {
	if len(s) <= limit {
		return s, false
	}
	n := max(limit-clipMarker, 0)
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	var b strings.Builder
	b.Grow(n + clipMarker)
	b.WriteString(s[:n])
	b.WriteString("…[cut: ")
	b.WriteString(strconv.Itoa(len(s)))
	b.WriteString(" bytes]")
	return b.String(), true
}

// forwardedURI is the URI of an x-forwarded-client-cert value with
// exactly one element holding exactly one non-empty URI, else "". The
// format is Envoy's (and the authorizer's parser's): elements separated
// by ',', key=value pairs by ';', a value double-quoted when it holds
// ',', ';' or '=', with \" for a quote; keys are case-insensitive.
func forwardedURI(v string) string {
	var uri string
	uris := 0
	for i := 0; ; {
		i = skipSpace(v, i)
		start := i
		for i < len(v) && v[i] != '=' && v[i] != ';' && v[i] != ',' {
			i++
		}
		key := strings.TrimRight(v[start:i], " \t")
		if key == "" || i >= len(v) || v[i] != '=' {
			return ""
		}
		i = skipSpace(v, i+1)
		var value string
		if i < len(v) && v[i] == '"' {
			var b strings.Builder
			closed := false
			for i++; i < len(v); {
				c := v[i]
				if c == '\\' && i+1 < len(v) && v[i+1] == '"' {
					b.WriteByte('"')
					i += 2
					continue
				}
				i++
				if c == '"' {
					closed = true
					break
				}
				b.WriteByte(c)
			}
			if i = skipSpace(v, i); !closed || i < len(v) && v[i] != ';' && v[i] != ',' {
				return ""
			}
			value = b.String()
		} else {
			start := i
			for i < len(v) && v[i] != ';' && v[i] != ',' {
				if v[i] == '"' {
					return ""
				}
				i++
			}
			value = strings.TrimRight(v[start:i], " \t")
		}
		if strings.EqualFold(key, "URI") {
			uri, uris = value, uris+1
		}
		switch {
		case i >= len(v):
			if uris != 1 {
				return ""
			}
			return uri
		case v[i] == ',':
			return "" // a second element: more than one proxy's word
		}
		i++
	}
}

func skipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}
