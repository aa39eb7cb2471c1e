package authz

import (
	"fmt"
	"math"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// pluginInput builds the input the way the OPA-Envoy plugin's
// envoyauth.RequestToInput does: protojson.Marshal with default options,
// decoded with OPA's util.UnmarshalJSON (numbers as json.Number), then the
// parsed_* keys, and ast.InterfaceToValue. It parses JSON and form bodies
// only; tests of the fast path give it nothing else.
func pluginInput(req *authv3.CheckRequest, vigil ast.Value) (ast.Value, error) {
	bs, err := protojson.Marshal(req)
	if err != nil {
		return nil, err
	}
	var input map[string]any
	if err := util.UnmarshalJSON(bs, &input); err != nil {
		return nil, err
	}
	h := req.GetAttributes().GetRequest().GetHttp()
	input["version"] = map[string]any{"ext_authz": "v3", "encoding": "protojson"}

	rawPath, rawQuery, _ := strings.Cut(h.GetPath(), "?")
	decoded, err := url.PathUnescape(rawPath)
	if err != nil {
		return nil, err
	}
	input["parsed_path"] = strings.Split(strings.TrimLeft(decoded, "/"), "/")
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, err
	}
	parsedQuery := make(map[string]any, len(query))
	for k, v := range query {
		parsedQuery[k] = v
	}
	input["parsed_query"] = parsedQuery

	body, truncated, err := pluginBody(h.GetHeaders(), h.GetBody(), h.GetRawBody())
	if err != nil {
		return nil, err
	}
	input["parsed_body"], input["truncated_body"] = body, truncated
	if p := req.GetAttributes().GetSource().GetPrincipal(); p != "" {
		input["source_principal"] = p
	}
	if vigil != nil {
		input["vigil"] = vigil
	}
	return ast.InterfaceToValue(input)
}

func pluginBody(headers map[string]string, body string, raw []byte) (any, bool, error) {
	if headers["x-envoy-auth-partial-body"] == "true" {
		return nil, true, nil
	}
	ct, ok := headers["content-type"]
	if !ok {
		return nil, false, nil
	}
	var form bool
	switch {
	case strings.Contains(ct, "application/json"):
	case strings.Contains(ct, "application/grpc"):
		return nil, false, nil
	case strings.Contains(ct, "application/x-www-form-urlencoded"):
		form = true
	default:
		return nil, false, nil
	}
	if body == "" {
		body = string(raw)
	}
	if body == "" {
		return nil, false, nil
	}
	if cl, ok := headers["content-length"]; ok {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil {
			return nil, false, err
		}
		if n != -1 && n > int64(len(body)) {
			return nil, true, nil
		}
	}
	if form {
		q, err := url.ParseQuery(body)
		return map[string][]string(q), false, err
	}
	var data any
	err := util.UnmarshalJSON([]byte(body), &data)
	return data, false, err
}

// inputDiff lists where two values differ, by path, for readable failures.
func inputDiff(path string, fast, slow ast.Value) []string {
	if fast.Compare(slow) == 0 {
		return nil
	}
	fo, ok1 := fast.(ast.Object)
	so, ok2 := slow.(ast.Object)
	if ok1 && ok2 {
		var out []string
		keys := map[string]*ast.Term{}
		for _, k := range append(fo.Keys(), so.Keys()...) {
			name := k.String()
			if s, ok := k.Value.(ast.String); ok {
				name = string(s)
			}
			keys[name] = k
		}
		for _, name := range slices.Sorted(func(yield func(string) bool) {
			for n := range keys {
				if !yield(n) {
					return
				}
			}
		}) {
			k := keys[name]
			f, s := fo.Get(k), so.Get(k)
			switch {
			case f == nil:
				out = append(out, fmt.Sprintf("%s.%s: missing from BuildInput; protojson has %v", path, name, s))
			case s == nil:
				out = append(out, fmt.Sprintf("%s.%s: %v from BuildInput; protojson has no such key", path, name, f))
			default:
				out = append(out, inputDiff(path+"."+name, f.Value, s.Value)...)
			}
		}
		return out
	}
	fa, ok1 := fast.(*ast.Array)
	sa, ok2 := slow.(*ast.Array)
	if ok1 && ok2 && fa.Len() == sa.Len() {
		var out []string
		for i := range fa.Len() {
			out = append(out, inputDiff(fmt.Sprintf("%s[%d]", path, i), fa.Elem(i).Value, sa.Elem(i).Value)...)
		}
		return out
	}
	return []string{fmt.Sprintf("%s: BuildInput has %v (%T), protojson has %v (%T)", path, fast, fast, slow, slow)}
}

// richRequest is a CheckRequest with most fields Envoy fills for a device
// posting telemetry.
func richRequest() *authv3.CheckRequest {
	meta, _ := structpb.NewStruct(map[string]any{
		"jwt": map[string]any{"sub": "slc-0042", "scopes": []any{"telemetry", "firmware"}, "exp": 1.7e9},
		"big": 1e21, "small": 1e-7, "half": 1.5, "neg": -3, "zero": 0, "none": nil, "yes": true, "text": "x\"y",
		"empty": map[string]any{}, "list": []any{},
	})
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "10.1.2.3", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 50432},
			}}},
			Labels:      map[string]string{"pole": "N-17", "class": "streetlight"},
			Principal:   "spiffe://city.example/zone/north/device/slc-0042",
			Certificate: "-----BEGIN%20CERTIFICATE-----%0AMIIB...%0A-----END%20CERTIFICATE-----%0A",
		},
		Destination: &authv3.AttributeContext_Peer{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "10.9.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8443},
			}}},
			Service:   "telemetry",
			Principal: "spiffe://city.example/zone/north/gateway/gw-north-1",
		},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(time.Date(2026, 11, 22, 3, 4, 5, 123456000, time.UTC)),
			Http: &authv3.AttributeContext_HttpRequest{
				Id:     "13359530607844510314",
				Method: "POST",
				Headers: map[string]string{
					":authority": "telemetry.city.example", ":method": "POST", ":scheme": "https",
					":path": "/api/v1/telemetry?batch=3&tag=a&tag=b", "content-type": "application/json; charset=utf-8",
					"content-length": "49", "user-agent": "slc/2.4.1", "x-request-id": "b2c0e8a4-1f9e-4a31-9c68-4b8a5b0b8f7e",
					"x-forwarded-proto": "https", "accept": "*/*",
				},
				Path:     "/api/v1/telemetry?batch=3&tag=a&tag=b",
				Host:     "telemetry.city.example",
				Scheme:   "https",
				Size:     49,
				Protocol: "HTTP/2",
				Body:     `{"lux": 412, "watts": 36.5, "faults": [], "id": 1}`,
			},
		},
		ContextExtensions:    map[string]string{ServiceExtension: "telemetry", "flow": "slc-telemetry"},
		MetadataContext:      &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.jwt_authn": meta, "nil": nil}},
		RouteMetadataContext: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"vigil": {Fields: map[string]*structpb.Value{"flow": structpb.NewStringValue("slc-telemetry")}}}},
		TlsSession:           &authv3.AttributeContext_TLSSession{Sni: "telemetry.city.example"},
	}}
}

// buildInputCases are CheckRequests whose BuildInput must equal the
// plugin's protojson path.
func buildInputCases(t testing.TB) []struct {
	name string
	req  *authv3.CheckRequest
} {
	t.Helper()
	typed, err := anypb.New(wrapperspb.String("typed"))
	if err != nil {
		t.Fatal(err)
	}
	rawHeaders := richRequest()
	h := rawHeaders.Attributes.Request.Http
	h.Headers = nil
	h.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":authority", RawValue: []byte("telemetry.city.example")},
		{Key: "x-forwarded-client-cert", RawValue: []byte(`URI=spiffe://city.example/zone/north/device/slc-0042`)},
		{Key: "x-odd", Value: "v", RawValue: []byte{0xff, 0x00, 'a'}},
		nil,
	}}
	h.Body, h.RawBody = "", []byte{0x01, 0x02, 0xfe, 0xff}
	h.Query, h.Fragment = "batch=3", "frag"

	addresses := richRequest()
	addresses.Attributes.Source.Address = &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol: corev3.SocketAddress_UDP, Address: "::1", PortSpecifier: &corev3.SocketAddress_NamedPort{NamedPort: "coap"},
		ResolverName: "custom", Ipv4Compat: true, NetworkNamespaceFilepath: "/var/run/netns/iot",
	}}}
	addresses.Attributes.Destination.Address = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/run/envoy.sock", Mode: 0o600}}}
	addresses.Attributes.Request.Time = timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))

	internal := richRequest()
	internal.Attributes.Source.Address = &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{EnvoyInternalAddress: &corev3.EnvoyInternalAddress{
		AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{}, EndpointId: "ep-1",
	}}}
	internal.Attributes.Destination.Address = &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol: 7, PortSpecifier: &corev3.SocketAddress_PortValue{},
	}}}
	internal.Attributes.Request.Time = timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 7, time.UTC))
	internal.Attributes.MetadataContext.TypedFilterMetadata = map[string]*anypb.Any{"typed": typed}

	empties := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:               &authv3.AttributeContext_Peer{Address: &corev3.Address{}},
		Destination:          &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{}}},
		Request:              &authv3.AttributeContext_Request{Time: &timestamppb.Timestamp{}, Http: &authv3.AttributeContext_HttpRequest{HeaderMap: &corev3.HeaderMap{}}},
		MetadataContext:      &corev3.Metadata{},
		RouteMetadataContext: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"x": {}}},
		TlsSession:           &authv3.AttributeContext_TLSSession{},
	}}

	form := richRequest()
	form.Attributes.Request.Http.Headers["content-type"] = "application/x-www-form-urlencoded"
	form.Attributes.Request.Http.Body = "a=1&b=2&a=3&c="
	delete(form.Attributes.Request.Http.Headers, "content-length")

	truncated := richRequest()
	truncated.Attributes.Request.Http.Headers["content-length"] = "4096"

	partial := richRequest()
	partial.Attributes.Request.Http.Headers["x-envoy-auth-partial-body"] = "true"

	rawJSON := richRequest()
	rawJSON.Attributes.Request.Http.Body = ""
	rawJSON.Attributes.Request.Http.RawBody = []byte(`[1, "two", {"three": 3.0}]`)
	delete(rawJSON.Attributes.Request.Http.Headers, "content-length")

	escaped := richRequest()
	escaped.Attributes.Request.Http.Path = "//api/v1/a%2Fb/%20c//?x=1&x=2&y=&%C3%A9=%E2%9C%93"
	escaped.Attributes.Request.Http.Headers["content-type"] = "text/plain"

	minimal := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{}},
	}}

	cases := []struct {
		name string
		req  *authv3.CheckRequest
	}{
		{"device telemetry", richRequest()},
		{"raw headers and body", rawHeaders},
		{"udp named port and pipe", addresses},
		{"internal address and typed metadata", internal},
		{"empty messages", empties},
		{"form body", form},
		{"truncated body", truncated},
		{"partial body", partial},
		{"raw JSON body", rawJSON},
		{"escaped path and query", escaped},
		{"minimal", minimal},
	}
	for i := range 4 {
		cases = append(cases, struct {
			name string
			req  *authv3.CheckRequest
		}{fmt.Sprintf("every field, oneof choice %d", i), everyField(i)})
	}
	return cases
}

// everyField is a CheckRequest with every field of AttributeContext set,
// found by reflection, so that a field go-control-plane adds is covered
// without anyone listing it. Oneofs take their member number choice (mod
// their size).
func everyField(choice int) *authv3.CheckRequest {
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{}}
	fillEvery(req.Attributes.ProtoReflect(), choice)
	// A path the plugin's parsers accept.
	req.Attributes.Request.Http.Path = "/every/field?q=1"
	if choice >= 2 {
		// Typed metadata sends BuildInput through protojson; leave it out
		// so that filter_metadata's own path is compared too.
		req.Attributes.MetadataContext.TypedFilterMetadata = nil
		req.Attributes.RouteMetadataContext.TypedFilterMetadata = nil
	}
	return req
}

func fillEvery(m protoreflect.Message, choice int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if od.Fields().Get(choice%od.Fields().Len()) != fd {
				continue
			}
		}
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			for j, k := range []string{"k1-" + string(fd.Name()), "k2"} {
				var v protoreflect.Value
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					v = mp.NewValue()
					fillMessage(v.Message(), choice+j)
				} else {
					v = scalarValue(fd.MapValue(), j)
				}
				mp.Set(protoreflect.ValueOfString(k).MapKey(), v)
			}
		case fd.IsList():
			l := m.Mutable(fd).List()
			for j := range 2 {
				if fd.Kind() == protoreflect.MessageKind {
					v := l.NewElement()
					fillMessage(v.Message(), choice+j)
					l.Append(v)
				} else {
					l.Append(scalarValue(fd, j))
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			fillMessage(m.Mutable(fd).Message(), choice)
		default:
			m.Set(fd, scalarValue(fd, choice))
		}
	}
}

// fillMessage fills m, giving the well-known types values protojson can
// write.
func fillMessage(m protoreflect.Message, choice int) {
	var v proto.Message
	switch m.Descriptor().FullName() {
	case "google.protobuf.Timestamp":
		v = timestamppb.New(time.Date(2026, 11, 22, 3, 4, 5, 120000000*(choice%2), time.UTC))
	case "google.protobuf.Struct":
		v, _ = structpb.NewStruct(map[string]any{"n": float64(choice), "s": "x", "l": []any{true, nil}})
	case "google.protobuf.Any":
		v, _ = anypb.New(wrapperspb.UInt32(uint32(choice)))
	default:
		fillEvery(m, choice)
		return
	}
	proto.Merge(m.Interface(), v)
}

func scalarValue(fd protoreflect.FieldDescriptor, j int) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(fmt.Sprintf("%s-%d é", fd.Name(), j))
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{0, 0xff, byte(j), '"'})
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		vs := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vs.Get(vs.Len() - 1).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(-1234 - j))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(-1 << 53)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(4242 + j))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(1<<63 + 1)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(1.25)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(2.5e-9)
	}
	panic(fmt.Sprintf("field %s: kind %v", fd.FullName(), fd.Kind()))
}

// TestBuildInputMatchesProtojson proves the fast path equal to the
// plugin's: same keys, same JSON shapes, same values.
func TestBuildInputMatchesProtojson(t *testing.T) {
	vigil := ast.MustParseTerm(`{"revision": 7, "subject": {"name": "slc-0042"}, "flows": []}`).Value
	for _, tc := range buildInputCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			want, err := pluginInput(tc.req, vigil)
			if err != nil {
				t.Fatalf("protojson path: %v", err)
			}
			got, err := BuildInput(tc.req, vigil)
			if err != nil {
				t.Fatalf("BuildInput: %v", err)
			}
			if d := inputDiff("input", got, want); len(d) > 0 {
				t.Errorf("BuildInput differs from the protojson path:\n  %s", strings.Join(d, "\n  "))
			}
		})
	}
	// The comparison is not vacuous.
	other := richRequest()
	other.Attributes.Request.Http.Headers["accept"] = "text/plain"
	a, _ := BuildInput(richRequest(), nil)
	b, _ := pluginInput(other, nil)
	if d := inputDiff("input", a, b); len(d) != 1 || !strings.Contains(d[0], "input.attributes.request.http.headers.accept") {
		t.Errorf("a changed header gives the diff %q", d)
	}
}

// TestAttributeFieldsCovered fails when go-control-plane adds a field to a
// message BuildInput writes by hand, or a message it does not know.
func TestAttributeFieldsCovered(t *testing.T) {
	handled := map[protoreflect.FullName][]protoreflect.Name{
		"envoy.service.auth.v3.AttributeContext": {"source", "destination", "request", "context_extensions",
			"metadata_context", "route_metadata_context", "tls_session"},
		"envoy.service.auth.v3.AttributeContext.Peer":    {"address", "service", "labels", "principal", "certificate"},
		"envoy.service.auth.v3.AttributeContext.Request": {"time", "http"},
		"envoy.service.auth.v3.AttributeContext.HttpRequest": {"id", "method", "headers", "header_map", "path", "host",
			"scheme", "query", "fragment", "size", "protocol", "body", "raw_body"},
		"envoy.service.auth.v3.AttributeContext.TLSSession": {"sni"},
		"envoy.config.core.v3.Address":                      {"socket_address", "pipe", "envoy_internal_address"},
		"envoy.config.core.v3.SocketAddress": {"protocol", "address", "port_value", "named_port", "resolver_name",
			"ipv4_compat", "network_namespace_filepath"},
		"envoy.config.core.v3.Pipe":                 {"path", "mode"},
		"envoy.config.core.v3.EnvoyInternalAddress": {"server_listener_name", "endpoint_id"},
		"envoy.config.core.v3.HeaderMap":            {"headers"},
		"envoy.config.core.v3.HeaderValue":          {"key", "value", "raw_value"},
		"envoy.config.core.v3.Metadata":             {"filter_metadata", "typed_filter_metadata"},
	}
	seen := map[protoreflect.FullName]bool{}
	var walk func(md protoreflect.MessageDescriptor)
	walk = func(md protoreflect.MessageDescriptor) {
		if seen[md.FullName()] || strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
			return
		}
		seen[md.FullName()] = true
		want, ok := handled[md.FullName()]
		if !ok {
			t.Errorf("BuildInput does not know message %s; teach input.go to write it", md.FullName())
			return
		}
		var got []protoreflect.Name
		for i := range md.Fields().Len() {
			fd := md.Fields().Get(i)
			got = append(got, fd.Name())
			if fd.IsMap() {
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					walk(fd.MapValue().Message())
				}
			} else if fd.Kind() == protoreflect.MessageKind {
				walk(fd.Message())
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s has fields %v; input.go writes %v", md.FullName(), got, want)
		}
	}
	walk((&authv3.AttributeContext{}).ProtoReflect().Descriptor())
}

func TestBuildInputShape(t *testing.T) {
	req := richRequest()
	req.Attributes.Request.Http.Path = "/api/v1/a%2Fb?x=1&x=2"
	in, err := BuildInput(req, ast.String("vigil-value"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ ref, want string }{
		{"input.attributes.contextExtensions", `{"vigil.service": "telemetry", "flow": "slc-telemetry"}`},
		{"input.attributes.source.address.socketAddress.portValue", `50432`},
		{"input.attributes.request.http.size", `"49"`},
		{"input.attributes.request.time", `"2026-11-22T03:04:05.123456Z"`},
		{"input.attributes.tlsSession.sni", `"telemetry.city.example"`},
		{"input.attributes.metadataContext.filterMetadata.nil", `{}`},
		{"input.parsed_path", `["api", "v1", "a", "b"]`},
		{"input.parsed_query", `{"x": ["1", "2"]}`},
		{"input.parsed_body", `{"lux": 412, "watts": 36.5, "faults": [], "id": 1}`},
		{"input.truncated_body", `false`},
		{"input.version", `{"ext_authz": "v3", "encoding": "protojson"}`},
		{"input.source_principal", `"spiffe://city.example/zone/north/device/slc-0042"`},
		{"input.vigil", `"vigil-value"`},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			ref := ast.MustParseRef(tc.ref)
			got, err := in.Find(ref[1:])
			if err != nil {
				t.Fatalf("not found: %v", err)
			}
			if want := ast.MustParseTerm(tc.want).Value; got.Compare(want) != 0 {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
	if _, err := in.Find(ast.MustParseRef("x.attributes.context_extensions")[1:]); err == nil {
		t.Error("snake_case attributes.context_extensions is set; the plugin writes contextExtensions")
	}
}

func TestBuildInputBodies(t *testing.T) {
	multipartBody := "--XyZ\r\nContent-Disposition: form-data; name=\"reading\"\r\n\r\n42\r\n" +
		"--XyZ\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{\"fw\": \"2.4.1\"}\r\n" +
		"--XyZ\r\nContent-Disposition: form-data; name=\"reading\"\r\n\r\n43\r\n--XyZ--\r\n"
	for _, tc := range []struct {
		name      string
		headers   map[string]string
		raw       bool // put the header in header_map instead of headers
		body      string
		want      string
		truncated bool
	}{
		{"json", map[string]string{"content-type": "application/json"}, false, `{"a": [1, 2]}`, `{"a": [1, 2]}`, false},
		{"json in header_map", map[string]string{"Content-Type": "application/json"}, true, `{"a": 1}`, `{"a": 1}`, false},
		{"json without body", map[string]string{"content-type": "application/json"}, false, ``, `null`, false},
		{"no content type", nil, false, `{"a": 1}`, `null`, false},
		{"text", map[string]string{"content-type": "text/plain"}, false, `{"a": 1}`, `null`, false},
		{"grpc", map[string]string{"content-type": "application/grpc"}, false, "\x00\x00\x00\x00\x00", `null`, false},
		{"multipart", map[string]string{"content-type": `multipart/form-data; boundary=XyZ`}, false, multipartBody,
			`{"reading": ["42", "43"], "meta": [{"fw": "2.4.1"}]}`, false},
		{"multipart without boundary", map[string]string{"content-type": `multipart/form-data`}, false, multipartBody, `null`, false},
		{"content-length beyond the body", map[string]string{"content-type": "application/json", "content-length": "100"}, false, `{}`, `null`, true},
		{"content-length -1", map[string]string{"content-type": "application/json", "content-length": "-1"}, false, `{}`, `{}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &authv3.AttributeContext_HttpRequest{Path: "/", Body: tc.body}
			if tc.raw {
				h.HeaderMap = &corev3.HeaderMap{}
				for k, v := range tc.headers {
					h.HeaderMap.Headers = append(h.HeaderMap.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
				}
			} else {
				h.Headers = tc.headers
			}
			in, err := BuildInput(&authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: h}}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := in.Find(ast.MustParseRef("x.parsed_body")[1:])
			if want := ast.MustParseTerm(tc.want).Value; body.Compare(want) != 0 {
				t.Errorf("parsed_body = %v, want %v", body, want)
			}
			truncated, _ := in.Find(ast.MustParseRef("x.truncated_body")[1:])
			if truncated.Compare(ast.Boolean(tc.truncated)) != 0 {
				t.Errorf("truncated_body = %v, want %v", truncated, tc.truncated)
			}
		})
	}
}

func TestBuildInputErrors(t *testing.T) {
	withHTTP := func(f func(h *authv3.AttributeContext_HttpRequest)) *authv3.CheckRequest {
		req := richRequest()
		f(req.Attributes.Request.Http)
		return req
	}
	withAttrs := func(f func(a *authv3.AttributeContext)) *authv3.CheckRequest {
		req := richRequest()
		f(req.Attributes)
		return req
	}
	for _, tc := range []struct {
		name string
		req  *authv3.CheckRequest
		want string
	}{
		{"nil request", nil, "no check request"},
		{"no attributes", &authv3.CheckRequest{}, "no attributes"},
		{"no http", withAttrs(func(a *authv3.AttributeContext) { a.Request.Http = nil }), "no attributes.request.http"},
		{"bad escape in path", withHTTP(func(h *authv3.AttributeContext_HttpRequest) { h.Path = "/a%zz" }), "path: invalid URL escape"},
		{"semicolon in query", withHTTP(func(h *authv3.AttributeContext_HttpRequest) { h.Path = "/a?x=1;y=2" }), "query: invalid semicolon"},
		{"invalid JSON body", withHTTP(func(h *authv3.AttributeContext_HttpRequest) { h.Body = "{"; delete(h.Headers, "content-length") }), "body:"},
		{"bad content-length", withHTTP(func(h *authv3.AttributeContext_HttpRequest) { h.Headers["content-length"] = "lots" }), `content-length "lots"`},
		{"time out of range", withAttrs(func(a *authv3.AttributeContext) { a.Request.Time = &timestamppb.Timestamp{Seconds: 1 << 40} }), "time: seconds out of range"},
		{"negative nanos", withAttrs(func(a *authv3.AttributeContext) { a.Request.Time = &timestamppb.Timestamp{Nanos: -1} }), "time: nanos out of range"},
		{"empty struct value", withAttrs(func(a *authv3.AttributeContext) {
			a.MetadataContext.FilterMetadata["x"] = &structpb.Struct{Fields: map[string]*structpb.Value{"v": {}}}
		}), "none of the oneof fields is set"},
		{"NaN in metadata", withAttrs(func(a *authv3.AttributeContext) {
			a.RouteMetadataContext.FilterMetadata["x"] = &structpb.Struct{Fields: map[string]*structpb.Value{"v": structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewNumberValue(math.NaN())}})}}
		}), "invalid number NaN"},
		{"headers and header_map disagree", withHTTP(func(h *authv3.AttributeContext_HttpRequest) {
			h.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "content-type", RawValue: []byte("text/plain")}}}
		}), "content-type: headers and header_map disagree"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := BuildInput(tc.req, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
			if tc.req != nil && tc.req.Attributes != nil && tc.req.Attributes.Request.GetHttp() != nil {
				if _, perr := pluginInput(tc.req, nil); perr == nil && !strings.Contains(tc.name, "header_map") {
					t.Errorf("the protojson path accepts what BuildInput refuses")
				}
			}
		})
	}
}

func TestParseRequest(t *testing.T) {
	const dev = "spiffe://city.example/zone/north/device/slc-0042"
	const gw = "spiffe://city.example/zone/north/gateway/gw-north-1"
	type in struct {
		host, path string
		headers    map[string]string
		headerMap  []*corev3.HeaderValue
	}
	build := func(i in) *authv3.CheckRequest {
		h := &authv3.AttributeContext_HttpRequest{Method: "POST", Host: i.host, Path: i.path, Headers: i.headers}
		if i.headerMap != nil {
			h.HeaderMap = &corev3.HeaderMap{Headers: i.headerMap}
		}
		if h.Host == "" {
			h.Host = "telemetry.city.example"
		}
		if h.Path == "" {
			h.Path = "/api/v1/telemetry"
		}
		return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:            &authv3.AttributeContext_Peer{Principal: gw},
			Request:           &authv3.AttributeContext_Request{Http: h},
			ContextExtensions: map[string]string{ServiceExtension: "telemetry"},
		}}
	}
	xfcc := func(v string) in { return in{headers: map[string]string{ForwardedClientCertHeader: v}} }
	base := Request{Principal: gw, Service: "telemetry", Host: "telemetry.city.example", Method: "POST", Path: "/api/v1/telemetry"}
	with := func(f func(r *Request)) Request { r := base; f(&r); return r }
	fwd := with(func(r *Request) { r.Forwarded = dev })

	for _, tc := range []struct {
		name    string
		in      in
		want    Request
		wantErr string
	}{
		{"no forwarding", in{}, base, ""},
		{"host with port", in{host: "Telemetry.City.Example:8443"}, base, ""},
		{"host with empty port", in{host: "telemetry.city.example:"}, base, ""},
		{"IPv4 with port", in{host: "10.0.0.7:80"}, with(func(r *Request) { r.Host = "10.0.0.7" }), ""},
		{"IPv6 with port", in{host: "[2001:DB8::1]:8443"}, with(func(r *Request) { r.Host = "2001:db8::1" }), ""},
		{"IPv6 in brackets", in{host: "[::1]"}, with(func(r *Request) { r.Host = "::1" }), ""},
		{"bare IPv6", in{host: "fe80::1"}, with(func(r *Request) { r.Host = "fe80::1" }), ""},
		{"query and fragment cut", in{path: "/api/v1/telemetry?batch=3#x"}, base, ""},
		{"fragment cut", in{path: "/api/v1/telemetry#x?y"}, base, ""},
		{"invalid port", in{host: "telemetry.city.example:http"}, base, `invalid port "http"`},
		{"port out of range", in{host: "telemetry.city.example:65536"}, base, `invalid port "65536"`},
		{"two colons", in{host: "a:1:2"}, base, "neither host[:port] nor an IPv6 address"},
		{"IPv4 in brackets", in{host: "[10.0.0.1]:80"}, base, "is not an IPv6 address"},
		{"IPv6 zone", in{host: "[fe80::1%25eth0]"}, base, "is not an IPv6 address"},
		{"unclosed bracket", in{host: "[::1"}, base, "unclosed '['"},
		{"junk after bracket", in{host: "[::1]x"}, base, `unexpected "x"`},
		{"userinfo", in{host: "user@telemetry.city.example"}, base, "invalid character '@'"},
		{"empty name", in{host: ":443"}, base, "empty name"},

		{"gateway forwards a device", xfcc("By=" + gw + ";Hash=abc;Subject=\"CN=slc-0042,O=City\";URI=" + dev), fwd, ""},
		{"URI key in any case, header name in any case", in{headers: map[string]string{"X-Forwarded-Client-Cert": "uri=" + dev}}, fwd, ""},
		{"quoted URI with escaped quote elsewhere", xfcc(`Subject="CN=\"odd\", O=x;y";URI="` + dev + `"`), fwd, ""},
		{"spaces around separators", xfcc(" Hash=abc ; URI=" + dev + " "), fwd, ""},
		{"DNS keys are not identities", xfcc("URI=" + dev + ";DNS=slc-0042.city.example;DNS=x"), fwd, ""},
		{"header_map only", in{headerMap: []*corev3.HeaderValue{{Key: ForwardedClientCertHeader, RawValue: []byte("URI=" + dev)}}}, fwd, ""},
		{"headers and header_map agree", in{
			headers:   map[string]string{ForwardedClientCertHeader: "URI=" + dev},
			headerMap: []*corev3.HeaderValue{{Key: "X-Forwarded-Client-Cert", Value: "URI=" + dev}},
		}, fwd, ""},

		{"two elements", xfcc("URI=" + dev + ",URI=spiffe://city.example/zone/north/device/slc-0043"), base,
			"x-forwarded-client-cert: 2 elements; a gateway must forward exactly one device identity"},
		{"two header_map fields", in{headerMap: []*corev3.HeaderValue{
			{Key: ForwardedClientCertHeader, RawValue: []byte("URI=" + dev)},
			{Key: ForwardedClientCertHeader, RawValue: []byte("URI=" + dev)},
		}}, base, "2 elements"},
		{"two header keys differing in case", in{headers: map[string]string{
			ForwardedClientCertHeader: "URI=" + dev, "X-Forwarded-Client-Cert": "URI=" + dev,
		}}, base, "2 elements"},
		{"headers and header_map disagree", in{
			headers:   map[string]string{ForwardedClientCertHeader: "URI=" + dev},
			headerMap: []*corev3.HeaderValue{{Key: ":path", RawValue: []byte("/")}},
		}, base, "x-forwarded-client-cert: headers and header_map disagree"},
		{"two URIs", xfcc("URI=" + dev + ";URI=spiffe://city.example/zone/north/device/slc-0043"), base,
			"2 URI values; the forwarded certificate must carry exactly one SPIFFE ID"},
		{"no URI", xfcc("By=" + gw + ";Hash=abc"), base, "no URI"},
		{"empty URI (Envoy writes URI= for a certificate without one)", xfcc("By=" + gw + ";URI="), base, `URI "": not a spiffe:// URI`},
		{"not SPIFFE", xfcc("URI=https://city.example/device/slc-0042"), base, "not a spiffe:// URI"},
		{"upper-case scheme", xfcc("URI=SPIFFE://city.example/zone/north/device/slc-0042"), base, "not a spiffe:// URI"},
		{"trust domain only", xfcc("URI=spiffe://city.example"), base, "no path"},
		{"trailing slash", xfcc("URI=spiffe://city.example/zone/"), base, "empty path segment"},
		{"dot segment", xfcc("URI=spiffe://city.example/zone/../device/x"), base, `path segment ".."`},
		{"percent in path", xfcc("URI=spiffe://city.example/zone/%2e"), base, "invalid character '%' in the path"},
		{"query in ID", xfcc(`URI="spiffe://city.example/a?b=c"`), base, "invalid character '?' in the path"},
		{"upper-case trust domain", xfcc("URI=spiffe://City.example/a"), base, "invalid character 'C' in the trust domain"},
		{"empty header", xfcc(""), base, "empty header"},
		{"unterminated quote", xfcc(`Subject="CN=x;URI=` + dev), base, "unterminated quoted value"},
		{"text after quote", xfcc(`URI="` + dev + `"x`), base, "text after a quoted value"},
		{"quote inside value", xfcc(`URI=spiffe://a"b`), base, "quote inside an unquoted value"},
		{"pair without =", xfcc("URI"), base, `pair "URI" has no '='`},
		{"trailing separator", xfcc("URI=" + dev + ";"), base, "ends with ';'"},
		{"empty element", xfcc("URI=" + dev + ",,URI=" + dev), base, "empty pair"},
		{"invalid key", xfcc("U RI=" + dev), base, `invalid key "U RI"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRequest(build(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("ParseRequest:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseRequestMissingParts(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  *authv3.CheckRequest
		want string
	}{
		{"nil", nil, "no check request"},
		{"no attributes", &authv3.CheckRequest{}, "no attributes"},
		{"no request", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{}}, "no attributes.request"},
		{"no http", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}}, "no attributes.request.http"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseRequest(tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
	// No source is no principal, which the server answers with 401.
	r, err := ParseRequest(&authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/"}},
	}})
	if err != nil || r.Principal != "" || r.Method != "GET" {
		t.Errorf("no source: %+v, %v", r, err)
	}
}

// deviceRequest is what a gateway's Envoy sends for a device's request
// with Vigil's configuration: no body, no metadata.
func deviceRequest() *authv3.CheckRequest {
	req := richRequest()
	a := req.Attributes
	a.Source.Labels, a.Source.Certificate = nil, ""
	a.MetadataContext, a.RouteMetadataContext = nil, nil
	h := a.Request.Http
	h.Body, h.Size = "", 0
	delete(h.Headers, "content-type")
	delete(h.Headers, "content-length")
	h.Headers[ForwardedClientCertHeader] = "By=spiffe://city.example/zone/north/gateway/gw-north-1;URI=spiffe://city.example/zone/north/device/slc-0042"
	return req
}

// BenchmarkBuildInput compares BuildInput with the plugin's protojson path,
// for a device request as Vigil's gateways send it (11 headers) and for a
// rich one (with a JSON body and a 12-key metadata struct).
func BenchmarkBuildInput(b *testing.B) {
	vigil := ast.MustParseTerm(`{"revision": 7, "subject": {"name": "slc-0042"}, "flows": []}`).Value
	b.Logf("%s/%s, %d CPUs", runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	for _, rc := range []struct {
		name string
		req  *authv3.CheckRequest
	}{{"device", deviceRequest()}, {"rich", richRequest()}} {
		b.Run(rc.name, func(b *testing.B) { benchmarkBuildInput(b, rc.req, vigil) })
	}
}

func benchmarkBuildInput(b *testing.B, req *authv3.CheckRequest, vigil ast.Value) {
	for _, bc := range []struct {
		name  string
		build func(*authv3.CheckRequest, ast.Value) (ast.Value, error)
	}{
		{"fast", BuildInput},
		// The policy reads every part of the input: the lazy value is
		// converted whole.
		{"fast-read-all", func(req *authv3.CheckRequest, vigil ast.Value) (ast.Value, error) {
			v, err := BuildInput(req, vigil)
			if err == nil {
				v.Hash()
			}
			return v, err
		}},
		{"protojson", pluginInput},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.build(req, vigil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkParseRequest(b *testing.B) {
	req := deviceRequest()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseRequest(req); err != nil {
			b.Fatal(err)
		}
	}
}
