package envoymodel

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"gopkg.in/yaml.v3"
)

// Access logs of the HTTP connection manager (access_log), checked as
// Envoy checks them when the listener is loaded (a failure NACKs the
// listener), and recorded per request.
//
//   - envoy.access_loggers.stdout (StdoutAccessLog): accepted; the model
//     records the entry, not the formatted line.
//   - envoy.access_loggers.http_grpc (HttpGrpcAccessLogConfig): the config
//     must pass its proto validation (MessageUtil::downcastAndValidate);
//     transport_api_version must be V3 (Config::Utility::
//     checkTransportVersion: "V2 (and AUTO) xDS transport protocol
//     versions are deprecated"); grpc_service.envoy_grpc.cluster_name must
//     name an active cluster ("Unknown gRPC client cluster '…'") that is
//     static, defined in the bootstrap, not added by CDS ("gRPC client
//     cluster '…' is not static"): envoyproxy/envoy#2360 and #17908
//     (access_loggers/grpc/config_utils.cc), the cluster manager's
//     checkActiveStaticCluster. Each stream's first message carries the
//     identifier (the bootstrap's node and log_name; api:
//     envoy/service/accesslog/v3/als.proto "Identifier data that will only
//     be sent in the first message on the stream").
//   - Access log filters, google_grpc services, custom tags and filter
//     state objects are not modelled.
//
// The entry follows HttpGrpcAccessLog::emitLog and
// GrpcCommon::Utility::extractCommonAccessLogProperties
// (source/extensions/access_loggers/grpc/): downstream addresses, TLS
// properties (URI SANs of the peer and local certificates, subjects,
// SNI), start time, upstream cluster and route name when forwarded; the
// request's method, scheme, authority, path, user agent, x-forwarded-for,
// x-request-id, header bytes, and each additional_request_headers_to_log
// header present (repeated values joined with ","), from the request
// headers as the filters and the router left them; the response code of a
// local reply (an upstream's answer is not modelled) and each
// additional_response_headers_to_log header the ext_authz filter put on
// the reply (a denial's headers, or an OK's response_headers_to_add).
// No entry is recorded for a connection refused before any request (TLS).

// AccessLog is what one access logger of the connection manager records
// for a request.
type AccessLog struct {
	// Logger is the access log's name (envoy.access_loggers.stdout, …).
	Logger string
	// Cluster is the gRPC access log service's static cluster, and
	// Identifier what the first message of the logger's stream carries;
	// empty for stdout.
	Cluster    string
	Identifier *alsv3.StreamAccessLogsMessage_Identifier
	// Entry is the HTTP access log entry.
	Entry *accesslogdatav3.HTTPAccessLogEntry
}

// ParseBootstrap reads the bootstrap `vigil envoy bootstrap` prints (YAML
// or JSON). Typed configs of types this package does not register are
// kept as TypedStructs.
func ParseBootstrap(data []byte) (*bootstrapv3.Bootstrap, error) {
	var item any
	if err := yaml.Unmarshal(data, &item); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	item = (&Resources{}).wrapUnknown(item)
	js, err := json.Marshal(item)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(js, b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

// rejected is an error for configuration Envoy refuses.
func rejected(format string, args ...any) error {
	return fmt.Errorf("envoymodel: Envoy rejects the configuration: "+format, args...)
}

// logger is one checked access log.
type logger struct {
	name    string
	grpc    *grpclogv3.HttpGrpcAccessLogConfig // nil for stdout
	cluster string
}

// accessLoggers checks the connection manager's access logs as Envoy does
// when it loads the listener.
func (p *Proxy) accessLoggers(listener string, hcm *hcmv3.HttpConnectionManager) ([]*logger, error) {
	var out []*logger
	for _, a := range hcm.GetAccessLog() {
		lg, err := p.accessLogger(a)
		if err != nil {
			return nil, fmt.Errorf("listener %s: access log %s: %w", listener, a.GetName(), err)
		}
		out = append(out, lg)
	}
	return out, nil
}

func (p *Proxy) accessLogger(a *accesslogv3.AccessLog) (*logger, error) {
	if a.GetFilter() != nil {
		return nil, unmodelled("access log filters")
	}
	cfg := a.GetTypedConfig()
	switch {
	case cfg == nil:
		return nil, rejected("no typed_config")
	case cfg.MessageIs(&streamv3.StdoutAccessLog{}):
		c := &streamv3.StdoutAccessLog{}
		if err := cfg.UnmarshalTo(c); err != nil {
			return nil, err
		}
		if err := c.ValidateAll(); err != nil {
			return nil, rejected("%v", err)
		}
		return &logger{name: a.GetName()}, nil
	case cfg.MessageIs(&grpclogv3.HttpGrpcAccessLogConfig{}):
	default:
		return nil, unmodelled("access logger %s", cfg.GetTypeUrl())
	}
	c := &grpclogv3.HttpGrpcAccessLogConfig{}
	if err := cfg.UnmarshalTo(c); err != nil {
		return nil, err
	}
	if err := c.ValidateAll(); err != nil {
		return nil, rejected("%v", err)
	}
	common := c.GetCommonConfig()
	if v := common.GetTransportApiVersion(); v != corev3.ApiVersion_V3 {
		return nil, rejected("transport_api_version %v: V2 (and AUTO) xDS transport protocol versions are deprecated", v)
	}
	if len(common.GetFilterStateObjectsToLog()) > 0 || len(common.GetCustomTags()) > 0 || len(c.GetAdditionalResponseTrailersToLog()) > 0 {
		return nil, unmodelled("gRPC access log filter state objects, custom tags or response trailers")
	}
	if common.GetGrpcService().GetGoogleGrpc() != nil {
		return nil, unmodelled("gRPC access log over google_grpc")
	}
	cluster := common.GetGrpcService().GetEnvoyGrpc().GetClusterName()
	if p.Bootstrap == nil {
		return nil, unmodelled("gRPC access log to cluster %q: the proxy has no Bootstrap to find it in", cluster)
	}
	if !slices.ContainsFunc(p.Bootstrap.GetStaticResources().GetClusters(), func(sc *clusterv3.Cluster) bool { return sc.GetName() == cluster }) {
		if p.Resources.Cluster(cluster) != nil {
			return nil, rejected("gRPC client cluster '%s' is not static", cluster)
		}
		return nil, rejected("Unknown gRPC client cluster '%s'", cluster)
	}
	return &logger{name: a.GetName(), grpc: c, cluster: cluster}, nil
}

// CheckAccessLogs checks the access logs of every listener's connection
// manager as Envoy does when it loads the listeners.
func (p *Proxy) CheckAccessLogs() error {
	for _, l := range p.Resources.Listeners {
		for _, fc := range l.GetFilterChains() {
			hcm, err := hcmOf(l.GetName(), fc)
			if err != nil {
				return err
			}
			if _, err := p.accessLoggers(l.GetName(), hcm); err != nil {
				return err
			}
		}
	}
	return nil
}

// logRequest records what each logger logs for the request that ended as
// o, with the request headers as h (the filters' and router's changes
// applied).
func (p *Proxy) logRequest(loggers []*logger, dc Downstream, c *conn, h hmap, start time.Time, o *Outcome) {
	if len(loggers) == 0 {
		return
	}
	if o.Forwarded && o.Upstream != nil {
		h = hmap(o.Upstream.headerMap())
	}
	reply := replyHeaders(o)
	for _, lg := range loggers {
		e := logEntry(dc, c, h, reply, start, o, lg.grpc)
		al := AccessLog{Logger: lg.name, Cluster: lg.cluster, Entry: e}
		if lg.grpc != nil {
			al.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{
				Node: proto.Clone(p.Bootstrap.GetNode()).(*corev3.Node), LogName: lg.grpc.GetCommonConfig().GetLogName(),
			}
		}
		o.AccessLogs = append(o.AccessLogs, al)
	}
}

// replyHeaders are the headers ext_authz put on the reply: a denial's, or
// an OK answer's response_headers_to_add (the last check's).
func replyHeaders(o *Outcome) hmap {
	var h hmap
	for i := len(o.Checks) - 1; i >= 0; i-- {
		resp := o.Checks[i].Response
		if resp == nil {
			continue
		}
		hvs := resp.GetOkResponse().GetResponseHeadersToAdd()
		if code.Code(resp.GetStatus().GetCode()) != code.Code_OK {
			hvs = resp.GetDeniedResponse().GetHeaders()
		}
		for _, hv := range hvs {
			k, v := strings.ToLower(hv.GetHeader().GetKey()), hv.GetHeader().GetValue()
			if hv.GetAppend().GetValue() || hv.GetAppendAction() == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
				h.add(k, v)
			} else {
				h.set(k, v)
			}
		}
		break
	}
	return h
}

func logEntry(dc Downstream, c *conn, h, reply hmap, start time.Time, o *Outcome, cfg *grpclogv3.HttpGrpcAccessLogConfig) *accesslogdatav3.HTTPAccessLogEntry {
	common := &accesslogdatav3.AccessLogCommon{StartTime: timestamppb.New(start)}
	if dc.RemoteAddr.IsValid() {
		common.DownstreamRemoteAddress = &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: dc.RemoteAddr.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(dc.RemoteAddr.Port())},
		}}}
	}
	if c.tls {
		common.TlsProperties = &accesslogdatav3.TLSProperties{
			TlsSniHostname:             dc.SNI,
			LocalCertificateProperties: certProperties(c.local),
			PeerCertificateProperties:  certProperties(c.peer),
		}
	}
	if o.Forwarded {
		common.UpstreamCluster = o.Cluster
	}
	common.RouteName = o.Route
	req := &accesslogdatav3.HTTPRequestProperties{}
	get := func(name string) string { v, _ := h.get(name); return v }
	if m, ok := corev3.RequestMethod_value[get(":method")]; ok {
		req.RequestMethod = corev3.RequestMethod(m)
	}
	req.Scheme, req.Authority, req.Path = get(":scheme"), get(":authority"), get(":path")
	req.UserAgent, req.ForwardedFor, req.RequestId = get("user-agent"), get("x-forwarded-for"), get("x-request-id")
	req.OriginalPath = get("x-envoy-original-path")
	for _, e := range h {
		req.RequestHeadersBytes += uint64(len(e.Name) + len(e.Value))
	}
	for _, name := range cfg.GetAdditionalRequestHeadersToLog() {
		if v, ok := h.get(strings.ToLower(name)); ok {
			if req.RequestHeaders == nil {
				req.RequestHeaders = map[string]string{}
			}
			req.RequestHeaders[strings.ToLower(name)] = v
		}
	}
	resp := &accesslogdatav3.HTTPResponseProperties{}
	if !o.Forwarded && o.Status != 0 {
		resp.ResponseCode = wrapperspb.UInt32(uint32(o.Status))
	}
	for _, name := range cfg.GetAdditionalResponseHeadersToLog() {
		if v, ok := reply.get(strings.ToLower(name)); ok {
			if resp.ResponseHeaders == nil {
				resp.ResponseHeaders = map[string]string{}
			}
			resp.ResponseHeaders[strings.ToLower(name)] = v
		}
	}
	return &accesslogdatav3.HTTPAccessLogEntry{CommonProperties: common, Request: req, Response: resp}
}

// certProperties are a certificate's URI SANs and subject, as Envoy logs
// them (nil without a certificate).
func certProperties(cert *x509.Certificate) *accesslogdatav3.TLSProperties_CertificateProperties {
	if cert == nil {
		return nil
	}
	cp := &accesslogdatav3.TLSProperties_CertificateProperties{Subject: cert.Subject.String()}
	for _, u := range uriSANs(cert) {
		cp.SubjectAltName = append(cp.SubjectAltName, &accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName{
			San: &accesslogdatav3.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: u},
		})
	}
	return cp
}
