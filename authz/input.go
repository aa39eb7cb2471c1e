package authz

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigil-iot/vigil/topology"
)

// ServiceExtension is the ext_authz context extension, set per route by
// Vigil's xDS, that names the destination service.
const ServiceExtension = "vigil.service"

// ForwardedClientCertHeader carries, from a gateway, the identity of the
// device it speaks for (Envoy's XFCC format).
const ForwardedClientCertHeader = "x-forwarded-client-cert"

// maxSPIFFEIDLen is the SPIFFE limit on the length of an ID (a URI SAN).
const maxSPIFFEIDLen = 2048

// ParseRequest reads what Vigil decides on from a CheckRequest. It fails
// on anything it would have to guess at: a missing HTTP request, an
// authority that is not a host, or a forwarded identity that is not exactly
// one SPIFFE ID. On error the fields read so far are set, for the decision
// log.
func ParseRequest(req *authv3.CheckRequest) (Request, error) {
	h, err := checkHTTPRequest(req)
	if err != nil {
		return Request{}, err
	}
	a := req.GetAttributes()
	r := Request{
		Principal: a.GetSource().GetPrincipal(),
		Service:   a.GetContextExtensions()[ServiceExtension],
		Method:    h.GetMethod(),
		Path:      pathWithoutQuery(h.GetPath()),
	}
	if len(r.Path) > MaxPathBytes {
		return r, fmt.Errorf("path is %d bytes; at most %d are accepted", len(r.Path), MaxPathBytes)
	}
	if why := topology.PathProblem(r.Path); why != "" {
		return r, fmt.Errorf("path is not normalised: it %s", why)
	}
	if len(h.GetHost()) > MaxHostBytes {
		return r, fmt.Errorf("host is %d bytes; at most %d are accepted", len(h.GetHost()), MaxHostBytes)
	}
	if r.Host, err = authorityHost(h.GetHost()); err != nil {
		return r, err
	}
	xfcc, err := requestHeaderValues(h, ForwardedClientCertHeader)
	if err != nil || xfcc == nil {
		return r, err
	}
	r.Forwarded, err = forwardedIdentity(xfcc)
	return r, err
}

// checkHTTPRequest returns the HTTP request of req, or an error when there
// is none to decide on.
func checkHTTPRequest(req *authv3.CheckRequest) (*authv3.AttributeContext_HttpRequest, error) {
	switch {
	case req == nil:
		return nil, errors.New("no check request")
	case req.GetAttributes() == nil:
		return nil, errors.New("check request has no attributes")
	case req.GetAttributes().GetRequest() == nil:
		return nil, errors.New("check request has no attributes.request")
	case req.GetAttributes().GetRequest().GetHttp() == nil:
		return nil, errors.New("check request has no attributes.request.http")
	}
	return req.GetAttributes().GetRequest().GetHttp(), nil
}

// pathWithoutQuery cuts the query string and fragment off a request target.
func pathWithoutQuery(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}

// authorityHost is the host of a request authority, lower-cased and
// without its port. An IPv6 literal loses its brackets ("[::1]:80" is
// "::1", as url.URL.Hostname has it). An empty authority is an empty host.
func authorityHost(authority string) (string, error) {
	if authority == "" {
		return "", nil
	}
	if authority[0] == '[' {
		end := strings.IndexByte(authority, ']')
		if end < 0 {
			return "", fmt.Errorf("host %q: unclosed '['", authority)
		}
		if err := checkPort(authority, authority[end+1:]); err != nil {
			return "", err
		}
		lit := authority[1:end]
		addr, err := netip.ParseAddr(lit)
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return "", fmt.Errorf("host %q: %q is not an IPv6 address", authority, lit)
		}
		return addr.String(), nil
	}
	host := authority
	if i := strings.IndexByte(authority, ':'); i >= 0 {
		if strings.IndexByte(authority[i+1:], ':') >= 0 {
			// Several colons and no brackets: only a bare IPv6 address
			// (which cannot carry a port) reads that way.
			addr, err := netip.ParseAddr(authority)
			if err != nil || !addr.Is6() || addr.Zone() != "" {
				return "", fmt.Errorf("host %q: neither host[:port] nor an IPv6 address", authority)
			}
			return addr.String(), nil
		}
		if err := checkPort(authority, authority[i:]); err != nil {
			return "", err
		}
		host = authority[:i]
	}
	if host == "" {
		return "", fmt.Errorf("host %q: empty name", authority)
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; !isHostChar(c) {
			return "", fmt.Errorf("host %q: invalid character %q", authority, c)
		}
	}
	return strings.ToLower(host), nil
}

// checkPort accepts "" or ":" followed by a port number (RFC 3986 allows an
// empty port).
func checkPort(authority, rest string) error {
	if rest == "" {
		return nil
	}
	if rest[0] != ':' {
		return fmt.Errorf("host %q: unexpected %q after the host", authority, rest)
	}
	port := rest[1:]
	if port == "" {
		return nil
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("host %q: invalid port %q", authority, port)
	}
	return nil
}

// isHostChar accepts the unreserved characters of RFC 3986, the ones a
// DNS name or an IPv4 address is made of.
func isHostChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// requestHeaderValues returns the values of the request header name (lower
// case), or nil when it is absent. Keys are matched case-insensitively.
// Envoy sends headers in one of two fields: the headers map, or header_map
// when encode_raw_headers is set. If a request carries both, they must
// agree on this header, since reading only one of them would be a guess.
func requestHeaderValues(h *authv3.AttributeContext_HttpRequest, name string) ([]string, error) {
	var fromMap []string
	if v, ok := h.GetHeaders()[name]; ok {
		fromMap = append(fromMap, v)
	}
	var odd []string // keys that are not lower case: Envoy never sends them
	for k, v := range h.GetHeaders() {
		if len(k) == len(name) && k != name && strings.EqualFold(k, name) {
			odd = append(odd, v)
		}
	}
	slices.Sort(odd)
	fromMap = append(fromMap, odd...)

	var fromRaw []string
	raw := h.GetHeaderMap().GetHeaders()
	for _, hv := range raw {
		if len(hv.GetKey()) == len(name) && strings.EqualFold(hv.GetKey(), name) {
			v := hv.GetValue()
			if len(hv.GetRawValue()) > 0 {
				v = string(hv.GetRawValue())
			}
			fromRaw = append(fromRaw, v)
		}
	}

	switch {
	case len(h.GetHeaders()) > 0 && len(raw) > 0:
		if (fromMap == nil) != (fromRaw == nil) || strings.Join(fromMap, ",") != strings.Join(fromRaw, ",") {
			return nil, fmt.Errorf("%s: headers and header_map disagree", name)
		}
		return fromMap, nil
	case fromMap != nil:
		return fromMap, nil
	default:
		return fromRaw, nil
	}
}

// requestHeader is the value of the request header name (lower case);
// repeated fields are joined with ",".
func requestHeader(h *authv3.AttributeContext_HttpRequest, name string) (value string, present bool, err error) {
	vs, err := requestHeaderValues(h, name)
	if err != nil || vs == nil {
		return "", false, err
	}
	if len(vs) == 1 {
		return vs[0], true, nil
	}
	return strings.Join(vs, ","), true, nil
}

// forwardedIdentity is the device identity a gateway forwards in
// x-forwarded-client-cert. Each proxy that forwards appends one element,
// so the element describing the original client is the first; Vigil
// accepts exactly one element (the device behind the gateway) with exactly
// one URI, a SPIFFE ID. Anything else is ambiguous and refused.
func forwardedIdentity(values []string) (string, error) {
	var elems []xfccElement
	for _, v := range values {
		e, err := parseXFCC(v)
		if err != nil {
			return "", fmt.Errorf("%s: %w", ForwardedClientCertHeader, err)
		}
		elems = append(elems, e...)
	}
	if len(elems) != 1 {
		return "", fmt.Errorf("%s: %d elements; a gateway must forward exactly one device identity",
			ForwardedClientCertHeader, len(elems))
	}
	var uris []string
	for _, p := range elems[0] {
		if strings.EqualFold(p.key, "URI") {
			uris = append(uris, p.value)
		}
	}
	switch {
	case len(uris) == 0:
		return "", fmt.Errorf("%s: no URI; the forwarded certificate must name the device by its SPIFFE ID", ForwardedClientCertHeader)
	case len(uris) > 1:
		return "", fmt.Errorf("%s: %d URI values; the forwarded certificate must carry exactly one SPIFFE ID", ForwardedClientCertHeader, len(uris))
	}
	if err := checkSPIFFEID(uris[0]); err != nil {
		return "", fmt.Errorf("%s: URI %q: %w", ForwardedClientCertHeader, uris[0], err)
	}
	return uris[0], nil
}

// xfccElement is one element of an XFCC header: what one proxy added.
type xfccElement []xfccPair

type xfccPair struct{ key, value string }

// parseXFCC parses Envoy's x-forwarded-client-cert format: elements
// separated by ',', key=value pairs separated by ';', a value
// double-quoted when it holds ',', ';' or '=', with \" for a quote (the
// only escape: any other backslash is itself, as in Envoy's parser). Keys
// are case-insensitive; Envoy's are By, Hash, Cert, Chain, Subject, URI and
// DNS, and others are kept for the caller to ignore. It is strict: an empty
// element or pair, an unterminated quote or text after a closing quote is
// an error.
func parseXFCC(s string) ([]xfccElement, error) {
	if strings.Trim(s, " \t") == "" {
		return nil, errors.New("empty header")
	}
	var elems []xfccElement
	var cur xfccElement
	i := 0
	for {
		i = skipOWS(s, i)
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ';' && s[i] != ',' {
			i++
		}
		key := strings.TrimRight(s[start:i], " \t")
		if i >= len(s) || s[i] != '=' {
			if key == "" {
				return nil, fmt.Errorf("empty pair at offset %d", start)
			}
			return nil, fmt.Errorf("pair %q has no '='", key)
		}
		if !isToken(key) {
			return nil, fmt.Errorf("invalid key %q", key)
		}
		i = skipOWS(s, i+1)
		var value string
		if i < len(s) && s[i] == '"' {
			var b strings.Builder
			i++
			closed := false
			for i < len(s) {
				c := s[i]
				if c == '\\' && i+1 < len(s) && s[i+1] == '"' {
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
			if !closed {
				return nil, fmt.Errorf("%s: unterminated quoted value", key)
			}
			value = b.String()
			i = skipOWS(s, i)
			if i < len(s) && s[i] != ';' && s[i] != ',' {
				return nil, fmt.Errorf("%s: text after a quoted value", key)
			}
		} else {
			start := i
			for i < len(s) && s[i] != ';' && s[i] != ',' {
				if s[i] == '"' {
					return nil, fmt.Errorf("%s: quote inside an unquoted value", key)
				}
				i++
			}
			value = strings.TrimRight(s[start:i], " \t")
		}
		cur = append(cur, xfccPair{key: key, value: value})
		if i >= len(s) {
			return append(elems, cur), nil
		}
		if s[i] == ',' {
			elems = append(elems, cur)
			cur = nil
		}
		i++
		if skipOWS(s, i) >= len(s) {
			return nil, fmt.Errorf("ends with %q", s[i-1])
		}
	}
}

func skipOWS(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}

// isToken reports whether s is an RFC 9110 token (a header or XFCC key).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}

// checkSPIFFEID accepts a SPIFFE ID that names a workload:
// spiffe://<trust domain>/<path>, with the characters the SPIFFE standard
// allows, no empty, "." or ".." segment, and no query, fragment or
// percent-encoding.
func checkSPIFFEID(id string) error {
	if len(id) > maxSPIFFEIDLen {
		return fmt.Errorf("longer than %d bytes", maxSPIFFEIDLen)
	}
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return errors.New("not a spiffe:// URI")
	}
	td, path, ok := strings.Cut(rest, "/")
	if td == "" {
		return errors.New("no trust domain")
	}
	for i := 0; i < len(td); i++ {
		if c := td[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("invalid character %q in the trust domain", c)
		}
	}
	if !ok {
		return errors.New("no path: a trust domain is not a workload")
	}
	for seg := range strings.SplitSeq(path, "/") {
		switch seg {
		case "":
			return errors.New("empty path segment")
		case ".", "..":
			return fmt.Errorf("path segment %q", seg)
		}
		for i := 0; i < len(seg); i++ {
			if c := seg[i]; !(isHostChar(c) && c != '~') {
				return fmt.Errorf("invalid character %q in the path", c)
			}
		}
	}
	return nil
}

// BuildInput builds the policy input for req, in the shape the OPA-Envoy
// plugin gives policies, so that theirs run unchanged:
//
//	attributes        the AttributeContext as protojson.Marshal writes it
//	                  with default options: lowerCamelCase names
//	                  (contextExtensions, socketAddress.portValue), 64-bit
//	                  integers as strings, times in RFC 3339, bytes in
//	                  base64, empty fields left out
//	version           {"ext_authz": "v3", "encoding": "protojson"}
//	parsed_path       the path before "?", percent-decoded, split on "/"
//	parsed_query      query parameter → array of values
//	parsed_body       the body parsed for JSON, form and multipart content
//	                  types, else null
//	truncated_body    whether Envoy sent only part of the body
//	source_principal  attributes.source.principal, when set
//	vigil             the given value, when not nil
//
// The plugin gets there by protojson.Marshal, a JSON decode and
// ast.InterfaceToValue, for every request. BuildInput instead walks the
// protobuf fields into Go maps and hands them to OPA as a lazy object: a
// part becomes AST only when the policy reads it, so what a policy never
// looks at (the certificate, most headers, metadata) costs almost nothing.
// TestBuildInputMatchesProtojson and the fuzz test prove the two equal.
//
// The value keeps references to req's maps, so req must not change while
// it is in use; like any lazy object it is for one goroutine at a time.
func BuildInput(req *authv3.CheckRequest, vigil ast.Value) (ast.Value, error) {
	h, err := checkHTTPRequest(req)
	if err != nil {
		return nil, err
	}
	attrs, err := attributesMap(req.GetAttributes())
	if err != nil {
		return nil, fmt.Errorf("attributes: %w", err)
	}
	parsedPath, parsedQuery, err := parsePathAndQuery(h.GetPath())
	if err != nil {
		return nil, err
	}
	body, truncated, err := parseBody(h)
	if err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	in := make(map[string]any, 8)
	in["attributes"] = attrs
	in["version"] = inputVersion
	in["parsed_path"] = parsedPath
	in["parsed_query"] = parsedQuery
	in["parsed_body"] = body
	in["truncated_body"] = truncated
	if p := req.GetAttributes().GetSource().GetPrincipal(); p != "" {
		in["source_principal"] = p
	}
	if vigil != nil {
		in["vigil"] = vigil
	}
	return ast.LazyObject(in), nil
}

// inputVersion is input.version, as the plugin sets it for ext_authz v3.
var inputVersion = ast.NewObject(
	[2]*ast.Term{ast.StringTerm("ext_authz"), ast.StringTerm("v3")},
	[2]*ast.Term{ast.StringTerm("encoding"), ast.StringTerm("protojson")},
)

// parsePathAndQuery splits a request target the way the plugin does: the
// part before "?" is percent-decoded, stripped of leading slashes and split
// on "/" (so "%2F" splits too); the rest is parsed as a query string.
// Malformed escapes or query separators are errors.
func parsePathAndQuery(target string) ([]string, map[string]any, error) {
	rawPath, rawQuery, _ := strings.Cut(target, "?")
	decoded, err := url.PathUnescape(rawPath)
	if err != nil {
		return nil, nil, fmt.Errorf("path: %w", err)
	}
	segments := strings.Split(strings.TrimLeft(decoded, "/"), "/")
	if rawQuery == "" {
		return segments, map[string]any{}, nil
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, nil, fmt.Errorf("query: %w", err)
	}
	return segments, valuesMap(q), nil
}

func valuesMap(q map[string][]string) map[string]any {
	m := make(map[string]any, len(q))
	for k, vs := range q {
		m[k] = vs
	}
	return m
}

// parseBody is input.parsed_body and input.truncated_body, by the plugin's
// rules: nothing when Envoy flags a partial body or the content length
// exceeds what was sent; JSON, form and multipart bodies parsed; gRPC and
// any other content type left unparsed (null). A body that does not parse
// as its content type says is an error.
func parseBody(h *authv3.AttributeContext_HttpRequest) (any, bool, error) {
	if partial, _, err := requestHeader(h, "x-envoy-auth-partial-body"); err != nil {
		return nil, false, err
	} else if partial == "true" {
		return nil, true, nil
	}
	ct, ok, err := requestHeader(h, "content-type")
	if err != nil || !ok {
		return nil, false, err
	}
	var kind string
	switch {
	case strings.Contains(ct, "application/json"):
		kind = "json"
	case strings.Contains(ct, "application/grpc"):
		// The plugin decodes gRPC bodies only with proto descriptors
		// configured; Vigil has none.
		return nil, false, nil
	case strings.Contains(ct, "application/x-www-form-urlencoded"):
		kind = "form"
	case strings.Contains(ct, "multipart/form-data"):
		kind = "multipart"
	default:
		return nil, false, nil
	}
	payload := h.GetBody()
	if payload == "" {
		payload = string(h.GetRawBody())
	}
	if payload == "" {
		return nil, false, nil
	}
	if cl, ok, err := requestHeader(h, "content-length"); err != nil {
		return nil, false, err
	} else if ok {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil {
			return nil, false, fmt.Errorf("content-length %q: %w", cl, err)
		}
		if n != -1 && n > int64(len(payload)) {
			return nil, true, nil
		}
	}
	switch kind {
	case "json":
		var x any
		if err := util.UnmarshalJSON([]byte(payload), &x); err != nil {
			return nil, false, err
		}
		return x, false, nil
	case "form":
		q, err := url.ParseQuery(payload)
		if err != nil {
			return nil, false, err
		}
		return valuesMap(q), false, nil
	default:
		v, err := multipartMap(ct, payload)
		return v, false, err
	}
}

// multipartMap maps each form field name to the array of its values; a
// part whose content type is JSON is parsed.
func multipartMap(contentType, payload string) (any, error) {
	_, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return nil, err
	}
	boundary, ok := params["boundary"]
	if !ok {
		return nil, nil
	}
	values := map[string]any{}
	mr := multipart.NewReader(strings.NewReader(payload), boundary)
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return values, nil
		}
		if err != nil {
			return nil, err
		}
		name := p.FormName()
		if name == "" {
			continue
		}
		b, err := io.ReadAll(p)
		if err != nil {
			return nil, err
		}
		var v any = string(b)
		if strings.Contains(p.Header.Get("Content-Type"), "application/json") {
			if err := util.UnmarshalJSON(b, &v); err != nil {
				return nil, err
			}
		}
		vs, _ := values[name].([]any)
		values[name] = append(vs, v)
	}
}

// The functions below write AttributeContext as protojson.Marshal with
// default options would, into Go values that ast.InterfaceToValue turns
// into exactly what the plugin's JSON decode gives: lowerCamelCase JSON
// names; a scalar left out when it has its zero value, a message when nil,
// a map or list when empty, and a oneof member whenever it is set; 64-bit
// integers as strings, numbers as ast.Number, enums by name, bytes in
// standard base64, Timestamp in RFC 3339 and Struct as plain JSON. Maps of
// strings are the request's own. TestAttributeFieldsCovered fails when
// go-control-plane grows a field these functions do not write.

// pbMap is the JSON object of one message.
type pbMap map[string]any

func (m pbMap) str(key, v string) {
	if v != "" {
		m[key] = v
	}
}

func (m pbMap) strMap(key string, v map[string]string) {
	if len(v) > 0 {
		m[key] = v
	}
}

func uintNumber(n uint64) ast.Value { return ast.Number(strconv.FormatUint(n, 10)) }

func attributesMap(a *authv3.AttributeContext) (map[string]any, error) {
	m := make(pbMap, 8)
	if a.GetSource() != nil {
		m["source"] = peerMap(a.GetSource())
	}
	if a.GetDestination() != nil {
		m["destination"] = peerMap(a.GetDestination())
	}
	if r := a.GetRequest(); r != nil {
		req := make(pbMap, 2)
		if r.GetTime() != nil {
			t, err := timestampString(r.GetTime())
			if err != nil {
				return nil, fmt.Errorf("request.time: %w", err)
			}
			req["time"] = t
		}
		if r.GetHttp() != nil {
			req["http"] = httpMap(r.GetHttp())
		}
		m["request"] = map[string]any(req)
	}
	m.strMap("contextExtensions", a.GetContextExtensions())
	if a.GetMetadataContext() != nil {
		md, err := metadataMap(a.GetMetadataContext())
		if err != nil {
			return nil, fmt.Errorf("metadata_context: %w", err)
		}
		m["metadataContext"] = md
	}
	if a.GetRouteMetadataContext() != nil {
		md, err := metadataMap(a.GetRouteMetadataContext())
		if err != nil {
			return nil, fmt.Errorf("route_metadata_context: %w", err)
		}
		m["routeMetadataContext"] = md
	}
	if t := a.GetTlsSession(); t != nil {
		tls := make(pbMap, 1)
		tls.str("sni", t.GetSni())
		m["tlsSession"] = map[string]any(tls)
	}
	return m, nil
}

func peerMap(p *authv3.AttributeContext_Peer) map[string]any {
	m := make(pbMap, 5)
	if p.GetAddress() != nil {
		m["address"] = addressMap(p.GetAddress())
	}
	m.str("service", p.GetService())
	m.strMap("labels", p.GetLabels())
	m.str("principal", p.GetPrincipal())
	m.str("certificate", p.GetCertificate())
	return m
}

func addressMap(a *corev3.Address) map[string]any {
	m := make(pbMap, 1)
	switch x := a.GetAddress().(type) {
	case *corev3.Address_SocketAddress:
		m["socketAddress"] = socketAddressMap(x.SocketAddress)
	case *corev3.Address_Pipe:
		p := make(pbMap, 2)
		p.str("path", x.Pipe.GetPath())
		if mode := x.Pipe.GetMode(); mode != 0 {
			p["mode"] = uintNumber(uint64(mode))
		}
		m["pipe"] = map[string]any(p)
	case *corev3.Address_EnvoyInternalAddress:
		e := make(pbMap, 2)
		if n, ok := x.EnvoyInternalAddress.GetAddressNameSpecifier().(*corev3.EnvoyInternalAddress_ServerListenerName); ok {
			e["serverListenerName"] = n.ServerListenerName
		}
		e.str("endpointId", x.EnvoyInternalAddress.GetEndpointId())
		m["envoyInternalAddress"] = map[string]any(e)
	}
	return m
}

func socketAddressMap(s *corev3.SocketAddress) map[string]any {
	m := make(pbMap, 2)
	if p := s.GetProtocol(); p != 0 {
		if name, ok := corev3.SocketAddress_Protocol_name[int32(p)]; ok {
			m["protocol"] = name
		} else {
			m["protocol"] = ast.Number(strconv.Itoa(int(p)))
		}
	}
	m.str("address", s.GetAddress())
	switch x := s.GetPortSpecifier().(type) {
	case *corev3.SocketAddress_PortValue:
		m["portValue"] = uintNumber(uint64(x.PortValue))
	case *corev3.SocketAddress_NamedPort:
		m["namedPort"] = x.NamedPort
	}
	m.str("resolverName", s.GetResolverName())
	if s.GetIpv4Compat() {
		m["ipv4Compat"] = true
	}
	m.str("networkNamespaceFilepath", s.GetNetworkNamespaceFilepath())
	return m
}

func httpMap(h *authv3.AttributeContext_HttpRequest) map[string]any {
	m := make(pbMap, 12)
	m.str("id", h.GetId())
	m.str("method", h.GetMethod())
	m.strMap("headers", h.GetHeaders())
	if hm := h.GetHeaderMap(); hm != nil {
		headers := make(pbMap, 1)
		if hs := hm.GetHeaders(); len(hs) > 0 {
			list := make([]any, len(hs))
			for i, hv := range hs {
				e := make(pbMap, 2)
				e.str("key", hv.GetKey())
				e.str("value", hv.GetValue())
				if raw := hv.GetRawValue(); len(raw) > 0 {
					e["rawValue"] = base64.StdEncoding.EncodeToString(raw)
				}
				list[i] = map[string]any(e)
			}
			headers["headers"] = list
		}
		m["headerMap"] = map[string]any(headers)
	}
	m.str("path", h.GetPath())
	m.str("host", h.GetHost())
	m.str("scheme", h.GetScheme())
	m.str("query", h.GetQuery())
	m.str("fragment", h.GetFragment())
	if n := h.GetSize(); n != 0 {
		m["size"] = strconv.FormatInt(n, 10) // int64: a JSON string
	}
	m.str("protocol", h.GetProtocol())
	m.str("body", h.GetBody())
	if raw := h.GetRawBody(); len(raw) > 0 {
		m["rawBody"] = base64.StdEncoding.EncodeToString(raw)
	}
	return m
}

// Timestamp range of protojson (0001-01-01 to 9999-12-31).
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

// timestampString formats t as protojson does: RFC 3339 in UTC with 0, 3,
// 6 or 9 fractional digits.
func timestampString(t *timestamppb.Timestamp) (string, error) {
	secs, nanos := t.GetSeconds(), t.GetNanos()
	if secs < minTimestampSeconds || secs > maxTimestampSeconds {
		return "", fmt.Errorf("seconds out of range %d", secs)
	}
	if nanos < 0 || nanos > 999999999 {
		return "", fmt.Errorf("nanos out of range %d", nanos)
	}
	s := time.Unix(secs, int64(nanos)).UTC().Format("2006-01-02T15:04:05.000000000")
	s = strings.TrimSuffix(s, "000")
	s = strings.TrimSuffix(s, "000")
	s = strings.TrimSuffix(s, ".000")
	return s + "Z", nil
}

func metadataMap(m *corev3.Metadata) (map[string]any, error) {
	if len(m.GetTypedFilterMetadata()) > 0 {
		// google.protobuf.Any is written by resolving its type; Envoy
		// rarely sends it, so protojson does the work.
		bs, err := protojson.Marshal(m)
		if err != nil {
			return nil, err
		}
		var x map[string]any
		if err := util.UnmarshalJSON(bs, &x); err != nil {
			return nil, err
		}
		return x, nil
	}
	out := make(pbMap, 1)
	if fm := m.GetFilterMetadata(); len(fm) > 0 {
		filters := make(map[string]any, len(fm))
		for k, s := range fm {
			v, err := structMap(s)
			if err != nil {
				return nil, fmt.Errorf("filter_metadata[%q]: %w", k, err)
			}
			filters[k] = v
		}
		out["filterMetadata"] = filters
	}
	return out, nil
}

func structMap(s *structpb.Struct) (map[string]any, error) {
	m := make(map[string]any, len(s.GetFields()))
	for k, f := range s.GetFields() {
		v, err := structValue(f)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", k, err)
		}
		m[k] = v
	}
	return m, nil
}

func structValue(v *structpb.Value) (any, error) {
	switch k := v.GetKind().(type) {
	case *structpb.Value_NullValue:
		return nil, nil
	case *structpb.Value_NumberValue:
		return jsonNumber(k.NumberValue)
	case *structpb.Value_StringValue:
		return k.StringValue, nil
	case *structpb.Value_BoolValue:
		return k.BoolValue, nil
	case *structpb.Value_StructValue:
		return structMap(k.StructValue)
	case *structpb.Value_ListValue:
		vs := k.ListValue.GetValues()
		list := make([]any, len(vs))
		for i, e := range vs {
			x, err := structValue(e)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			list[i] = x
		}
		return list, nil
	}
	return nil, errors.New("google.protobuf.Value: none of the oneof fields is set")
}

// jsonNumber writes f as protojson (and encoding/json) do: no exponent
// between 1e-6 and 1e21, the shortest representation that reads back.
func jsonNumber(f float64) (ast.Value, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("google.protobuf.Value: invalid number %v", f)
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b := strconv.AppendFloat(make([]byte, 0, 24), f, format, -1, 64)
	if format == 'e' {
		// 1e-07 → 1e-7
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return ast.Number(b), nil
}
