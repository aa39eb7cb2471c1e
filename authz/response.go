package authz

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// DecisionIDHeader carries the decision ID to the upstream service and back
// to the client, so that a request can be found in the decision log.
const DecisionIDHeader = "x-vigil-decision-id"

// Reasons given when a policy does not give one.
const (
	defaultAllowReason = "allowed by policy"
	defaultDenyReason  = "denied by policy"
)

// ParseResult reads a policy's result in the forms of the OPA-Envoy plugin:
// a bare boolean, or an object with
//
//	allowed                    boolean, required
//	reason                     string (Vigil's)
//	http_status                integer 100..599, for a deny (default 403)
//	body                       string, the body of a deny
//	headers                    header object, or array of header objects:
//	                           added upstream on allow, to the reply on deny
//	response_headers_to_add    header object(s), added to the reply on allow
//	request_headers_to_remove  array of header names, removed upstream on allow
//
// where a header object maps a name to a string or an array of strings.
// Other keys are ignored. v is a native value as rego.ResultSet holds it
// (bool, map[string]any, []any, json.Number, string) or an ast.Value.
// Anything malformed is an error, which callers turn into a deny. Headers
// come out sorted by name, the values of one name in the order given.
func ParseResult(v any) (Result, error) {
	switch x := v.(type) {
	case *ast.Term:
		if x == nil {
			return Result{}, errors.New("policy result is null; want a boolean or an object with \"allowed\"")
		}
		return ParseResult(x.Value)
	case ast.Value:
		native, err := ast.JSON(x)
		if err != nil {
			return Result{}, fmt.Errorf("policy result: %w", err)
		}
		return ParseResult(native)
	case bool:
		return withDefaults(Result{Allowed: x}), nil
	case map[string]any:
		return parseResultObject(x)
	}
	return Result{}, fmt.Errorf("policy result is %s; want a boolean or an object with \"allowed\"", jsonKind(v))
}

func withDefaults(r Result) Result {
	if r.Reason == "" {
		r.Reason = defaultDenyReason
		if r.Allowed {
			r.Reason = defaultAllowReason
		}
	}
	if !r.Allowed && r.HTTPStatus == 0 {
		r.HTTPStatus = 403
	}
	return r
}

func parseResultObject(m map[string]any) (Result, error) {
	var r Result
	allowed, ok := m["allowed"]
	if !ok {
		return r, errors.New(`policy result has no "allowed"`)
	}
	if r.Allowed, ok = allowed.(bool); !ok {
		return r, fmt.Errorf(`policy result "allowed" is %s; want a boolean`, jsonKind(allowed))
	}
	var err error
	if r.Reason, err = optionalString(m, "reason"); err != nil {
		return r, err
	}
	if r.Body, err = optionalString(m, "body"); err != nil {
		return r, err
	}
	if s, ok := m["http_status"]; ok {
		if r.HTTPStatus, err = httpStatus(s); err != nil {
			return r, fmt.Errorf(`policy result "http_status": %w`, err)
		}
	}
	if r.Headers, err = resultHeaders(m, "headers"); err != nil {
		return r, err
	}
	if r.ResponseHeadersToAdd, err = resultHeaders(m, "response_headers_to_add"); err != nil {
		return r, err
	}
	if r.RequestHeadersToRemove, err = headerNames(m, "request_headers_to_remove"); err != nil {
		return r, err
	}
	return withDefaults(r), nil
}

func optionalString(m map[string]any, key string) (string, error) {
	v, ok := m[key]
	if !ok {
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("policy result %q is %s; want a string", key, jsonKind(v))
	}
	return s, nil
}

// httpStatus accepts an integral number from 100 to 599.
func httpStatus(v any) (int, error) {
	var f float64
	switch n := v.(type) {
	case json.Number:
		if i, err := n.Int64(); err == nil {
			f = float64(i)
		} else if f, err = n.Float64(); err != nil {
			return 0, fmt.Errorf("%s is not a number", n)
		}
	case float64:
		f = n
	case int:
		f = float64(n)
	case int64:
		f = float64(n)
	default:
		return 0, fmt.Errorf("%s; want a number", jsonKind(v))
	}
	if f != math.Trunc(f) || f < 100 || f > 599 {
		return 0, fmt.Errorf("%v is not an HTTP status (an integer from 100 to 599)", f)
	}
	return int(f), nil
}

// resultHeaders reads a header object, or an array of them, under key.
func resultHeaders(m map[string]any, key string) ([]Header, error) {
	v, ok := m[key]
	if !ok {
		return nil, nil
	}
	var objs []map[string]any
	switch x := v.(type) {
	case map[string]any:
		objs = []map[string]any{x}
	case []any:
		for i, e := range x {
			o, ok := e.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("policy result %q[%d] is %s; want an object of headers", key, i, jsonKind(e))
			}
			objs = append(objs, o)
		}
	default:
		return nil, fmt.Errorf("policy result %q is %s; want an object of headers", key, jsonKind(v))
	}
	var hs []Header
	for _, o := range objs {
		names := make([]string, 0, len(o))
		for name := range o {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			if err := checkHeaderName(name); err != nil {
				return nil, fmt.Errorf("policy result %q: %w", key, err)
			}
			var values []string
			switch x := o[name].(type) {
			case string:
				values = []string{x}
			case []string:
				values = x
			case []any:
				for i, e := range x {
					s, ok := e.(string)
					if !ok {
						return nil, fmt.Errorf("policy result %q: header %s[%d] is %s; want a string", key, name, i, jsonKind(e))
					}
					values = append(values, s)
				}
			default:
				return nil, fmt.Errorf("policy result %q: header %s is %s; want a string or an array of strings", key, name, jsonKind(o[name]))
			}
			for _, val := range values {
				if err := checkHeaderValue(val); err != nil {
					return nil, fmt.Errorf("policy result %q: header %s: %w", key, name, err)
				}
				hs = append(hs, Header{Key: name, Value: val})
			}
		}
	}
	slices.SortStableFunc(hs, func(a, b Header) int { return strings.Compare(a.Key, b.Key) })
	return hs, nil
}

// headerNames reads an array of header names under key.
func headerNames(m map[string]any, key string) ([]string, error) {
	v, ok := m[key]
	if !ok {
		return nil, nil
	}
	var names []string
	switch x := v.(type) {
	case []string:
		names = slices.Clone(x)
	case []any:
		for i, e := range x {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("policy result %q[%d] is %s; want a string", key, i, jsonKind(e))
			}
			names = append(names, s)
		}
	default:
		return nil, fmt.Errorf("policy result %q is %s; want an array of header names", key, jsonKind(v))
	}
	for _, name := range names {
		if err := checkHeaderName(name); err != nil {
			return nil, fmt.Errorf("policy result %q: %w", key, err)
		}
	}
	return names, nil
}

// checkHeaderName accepts a header name Envoy accepts from an authorizer
// (an RFC 9110 token), except Vigil's own decision ID header.
func checkHeaderName(name string) error {
	if !isToken(name) {
		return fmt.Errorf("%q is not a valid header name", name)
	}
	if strings.EqualFold(name, DecisionIDHeader) {
		return fmt.Errorf("%s is Vigil's; a policy may not set or remove it", DecisionIDHeader)
	}
	return nil
}

// checkHeaderValue refuses control characters other than tab (CR and LF
// above all), which Envoy rejects.
func checkHeaderValue(v string) error {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return fmt.Errorf("value %q holds control character %q", v, c)
		}
	}
	return nil
}

// jsonKind names the JSON type of a native value, for error messages.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number, float64, int, int64:
		return "a number"
	case string:
		return "a string"
	case []any, []string:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("a %T", v)
}

// Allow is the response to an allowed request: status OK; res.Headers and
// the decision ID set on the upstream request (replacing any the client
// sent); res.ResponseHeadersToAdd and the decision ID added to the reply;
// res.RequestHeadersToRemove removed upstream.
func Allow(res Result, decisionID string) *authv3.CheckResponse {
	upstream := headerOptions(res.Headers, 1)
	upstream = append(upstream, &corev3.HeaderValueOption{
		Header: &corev3.HeaderValue{Key: DecisionIDHeader, Value: decisionID},
	})
	reply := headerOptions(res.ResponseHeadersToAdd, 1)
	reply = append(reply, &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: DecisionIDHeader, Value: decisionID},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	})
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers:              upstream,
			HeadersToRemove:      slices.Clone(res.RequestHeadersToRemove),
			ResponseHeadersToAdd: reply,
		}},
		DynamicMetadata: decisionMetadata(decisionID),
	}
}

// Deny is the response to a denied request: PERMISSION_DENIED (or
// RESOURCE_EXHAUSTED for HTTP 429) with res.HTTPStatus (default 403),
// res.Headers and the decision ID on the reply, and res.Body, or else the
// JSON body {"decision_id": …, "reason": …} as application/json.
func Deny(res Result, decisionID string) *authv3.CheckResponse {
	status := res.HTTPStatus
	if status == 0 {
		status = 403
	}
	grpcCode := code.Code_PERMISSION_DENIED
	if status == 429 {
		grpcCode = code.Code_RESOURCE_EXHAUSTED
	}
	reason := res.Reason
	if reason == "" {
		reason = defaultDenyReason
	}
	return deniedResponse(grpcCode, status, reason, res.Headers, res.Body, decisionID)
}

// Unauthenticated is the response to a request without a verified client
// identity: UNAUTHENTICATED with HTTP 401 and the JSON body.
func Unauthenticated(reason, decisionID string) *authv3.CheckResponse {
	return deniedResponse(code.Code_UNAUTHENTICATED, 401, reason, nil, "", decisionID)
}

func deniedResponse(grpcCode code.Code, status int, reason string, hs []Header, body, decisionID string) *authv3.CheckResponse {
	headers := headerOptions(hs, 2)
	if body == "" {
		body = denialBody(decisionID, reason)
		if !slices.ContainsFunc(hs, func(h Header) bool { return strings.EqualFold(h.Key, "content-type") }) {
			headers = append(headers, &corev3.HeaderValueOption{
				Header: &corev3.HeaderValue{Key: "content-type", Value: "application/json"},
			})
		}
	}
	headers = append(headers, &corev3.HeaderValueOption{
		Header: &corev3.HeaderValue{Key: DecisionIDHeader, Value: decisionID},
	})
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(grpcCode), Message: reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(status)},
			Headers: headers,
			Body:    body,
		}},
		DynamicMetadata: decisionMetadata(decisionID),
	}
}

// denialBody is {"decision_id": …, "reason": …}.
func denialBody(decisionID, reason string) string {
	b, err := json.Marshal(struct {
		DecisionID string `json:"decision_id"`
		Reason     string `json:"reason"`
	}{decisionID, reason})
	if err != nil { // cannot happen: two strings
		return `{"decision_id":` + strconv.Quote(decisionID) + `}`
	}
	return string(b)
}

// headerOptions turns headers into Envoy's form, with room for extra more.
// Envoy sets (replaces) a header whose append flag is unset, so the second
// and later values of one name are appended, or only the last would stay.
func headerOptions(hs []Header, extra int) []*corev3.HeaderValueOption {
	out := make([]*corev3.HeaderValueOption, 0, len(hs)+extra)
	for i, h := range hs {
		o := &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: h.Key, Value: h.Value}}
		if slices.ContainsFunc(hs[:i], func(p Header) bool { return strings.EqualFold(p.Key, h.Key) }) {
			o.Append = wrapperspb.Bool(true)
		}
		out = append(out, o)
	}
	return out
}

// decisionMetadata is the dynamic metadata Envoy's access log can read the
// decision ID from, as the OPA-Envoy plugin sets it.
func decisionMetadata(decisionID string) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		"decision_id": structpb.NewStringValue(decisionID),
	}}
}
