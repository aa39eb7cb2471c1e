package authz

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// policyResult decodes JSON the way rego.ResultSet holds values (numbers
// as json.Number).
func policyResult(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := util.UnmarshalJSON([]byte(s), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestParseResult(t *testing.T) {
	for _, tc := range []struct {
		name    string
		result  string
		want    Result
		wantErr string
	}{
		{"true", `true`, Result{Allowed: true, Reason: "allowed by policy"}, ""},
		{"false", `false`, Result{Reason: "denied by policy", HTTPStatus: 403}, ""},
		{"allowed object", `{"allowed": true}`, Result{Allowed: true, Reason: "allowed by policy"}, ""},
		{"denied object with everything", `{
			"allowed": false, "reason": "no flow", "http_status": 418, "body": "teapot",
			"headers": {"x-b": "2", "x-a": ["1", "0"]}}`,
			Result{Reason: "no flow", HTTPStatus: 418, Body: "teapot",
				Headers: []Header{{"x-a", "1"}, {"x-a", "0"}, {"x-b", "2"}}}, ""},
		{"allowed object with everything", `{
			"allowed": true, "reason": "flow slc-telemetry",
			"headers": [{"x-zone": "north"}, {"x-class": "streetlight", "x-zone": "n1"}],
			"response_headers_to_add": {"x-frame-options": "DENY", "cache-control": ["no-store", "private"]},
			"request_headers_to_remove": ["x-debug", "authorization"],
			"dynamic_metadata": {"ignored": true}}`,
			Result{Allowed: true, Reason: "flow slc-telemetry",
				Headers:                []Header{{"x-class", "streetlight"}, {"x-zone", "north"}, {"x-zone", "n1"}},
				ResponseHeadersToAdd:   []Header{{"cache-control", "no-store"}, {"cache-control", "private"}, {"x-frame-options", "DENY"}},
				RequestHeadersToRemove: []string{"x-debug", "authorization"}}, ""},
		{"status as a float that is an integer", `{"allowed": false, "http_status": 429.0}`, Result{Reason: "denied by policy", HTTPStatus: 429}, ""},
		{"empty header array", `{"allowed": true, "headers": []}`, Result{Allowed: true, Reason: "allowed by policy"}, ""},

		{"null", `null`, Result{}, "policy result is null; want a boolean or an object"},
		{"string", `"allow"`, Result{}, "policy result is a string"},
		{"array", `[true]`, Result{}, "policy result is an array"},
		{"no allowed", `{"reason": "x"}`, Result{}, `policy result has no "allowed"`},
		{"allowed not bool", `{"allowed": "true"}`, Result{}, `"allowed" is a string; want a boolean`},
		{"allowed null", `{"allowed": null}`, Result{}, `"allowed" is null`},
		{"reason not string", `{"allowed": false, "reason": 1}`, Result{}, `"reason" is a number; want a string`},
		{"body not string", `{"allowed": false, "body": {"a": 1}}`, Result{}, `"body" is an object; want a string`},
		{"status string", `{"allowed": false, "http_status": "403"}`, Result{}, `"http_status": a string; want a number`},
		{"status fraction", `{"allowed": false, "http_status": 403.5}`, Result{}, "403.5 is not an HTTP status"},
		{"status too small", `{"allowed": false, "http_status": 99}`, Result{}, "99 is not an HTTP status"},
		{"status too big", `{"allowed": false, "http_status": 600}`, Result{}, "600 is not an HTTP status"},
		{"status huge", `{"allowed": false, "http_status": 1e400}`, Result{}, "http_status"},
		{"headers not object", `{"allowed": true, "headers": "x-a: 1"}`, Result{}, `"headers" is a string; want an object of headers`},
		{"header array of non-objects", `{"allowed": true, "headers": ["x-a"]}`, Result{}, `"headers"[0] is a string`},
		{"header value number", `{"allowed": true, "headers": {"x-a": 1}}`, Result{}, "header x-a is a number; want a string or an array of strings"},
		{"header value array of numbers", `{"allowed": true, "headers": {"x-a": ["1", 2]}}`, Result{}, "header x-a[1] is a number"},
		{"header name invalid", `{"allowed": true, "headers": {"x a": "1"}}`, Result{}, `"x a" is not a valid header name`},
		{"header name empty", `{"allowed": true, "response_headers_to_add": {"": "1"}}`, Result{}, `"" is not a valid header name`},
		{"pseudo-header", `{"allowed": true, "headers": {":path": "/admin"}}`, Result{}, `":path" is not a valid header name`},
		{"header value with CRLF", `{"allowed": true, "headers": {"x-a": "1\r\nx-admin: true"}}`, Result{}, "control character"},
		{"decision ID header", `{"allowed": true, "headers": {"X-Vigil-Decision-Id": "forged"}}`, Result{}, "x-vigil-decision-id is Vigil's"},
		{"removing the decision ID header", `{"allowed": true, "request_headers_to_remove": ["x-vigil-decision-id"]}`, Result{}, "x-vigil-decision-id is Vigil's"},
		{"headers to remove not array", `{"allowed": true, "request_headers_to_remove": "x-debug"}`, Result{}, "want an array of header names"},
		{"headers to remove with number", `{"allowed": true, "request_headers_to_remove": ["x-debug", 1]}`, Result{}, `"request_headers_to_remove"[1] is a number`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseResult(policyResult(t, tc.result))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if g, w := fmt.Sprintf("%+v", got), fmt.Sprintf("%+v", tc.want); g != w {
				t.Errorf("ParseResult:\n got %s\nwant %s", g, w)
			}
		})
	}
}

// TestParseResultValues covers the other forms a result may arrive in.
func TestParseResultValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    any
		want Result
	}{
		{"ast boolean", ast.Boolean(true), Result{Allowed: true, Reason: "allowed by policy"}},
		{"ast object", ast.MustParseTerm(`{"allowed": false, "http_status": 401, "headers": {"x-a": ["1"]}}`).Value,
			Result{Reason: "denied by policy", HTTPStatus: 401, Headers: []Header{{"x-a", "1"}}}},
		{"ast term", ast.BooleanTerm(false), Result{Reason: "denied by policy", HTTPStatus: 403}},
		{"native Go values", map[string]any{"allowed": false, "http_status": 503, "headers": map[string]any{"retry-after": []string{"30"}},
			"request_headers_to_remove": []string{"x-a"}},
			Result{Reason: "denied by policy", HTTPStatus: 503, Headers: []Header{{"retry-after", "30"}}, RequestHeadersToRemove: []string{"x-a"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseResult(tc.v)
			if err != nil {
				t.Fatal(err)
			}
			if g, w := fmt.Sprintf("%+v", got), fmt.Sprintf("%+v", tc.want); g != w {
				t.Errorf("ParseResult:\n got %s\nwant %s", g, w)
			}
		})
	}
	if _, err := ParseResult((*ast.Term)(nil)); err == nil {
		t.Error("a nil term parsed")
	}
	if _, err := ParseResult(ast.MustParseTerm(`{"allowed": true, "x": {1, 2}}`).Value); err != nil {
		t.Errorf("a set under an ignored key: %v", err)
	}
}

func hvo(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}}
}

func hvoAppend(k, v string) *corev3.HeaderValueOption {
	o := hvo(k, v)
	o.Append = wrapperspb.Bool(true)
	return o
}

func idMetadata(id string) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{"decision_id": structpb.NewStringValue(id)}}
}

func denied(c code.Code, msg string, status int, body string, hs ...*corev3.HeaderValueOption) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(c), Message: msg},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(status)}, Headers: hs, Body: body,
		}},
		DynamicMetadata: idMetadata("d-1"),
	}
}

func TestResponses(t *testing.T) {
	idReply := hvo(DecisionIDHeader, "d-1")
	idReply.AppendAction = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	jsonBody := func(reason string) string {
		b, _ := json.Marshal(map[string]string{"decision_id": "d-1", "reason": reason})
		return string(b)
	}
	for _, tc := range []struct {
		name string
		got  *authv3.CheckResponse
		want *authv3.CheckResponse
	}{
		{"allow", Allow(Result{Allowed: true, Reason: "ok"}, "d-1"), &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers:              []*corev3.HeaderValueOption{hvo(DecisionIDHeader, "d-1")},
				ResponseHeadersToAdd: []*corev3.HeaderValueOption{idReply},
			}},
			DynamicMetadata: idMetadata("d-1"),
		}},
		{"allow with headers", Allow(Result{Allowed: true,
			Headers:                []Header{{"x-a", "1"}, {"x-a", "2"}, {"x-b", "3"}},
			ResponseHeadersToAdd:   []Header{{"x-frame-options", "DENY"}},
			RequestHeadersToRemove: []string{"x-debug"},
		}, "d-1"), &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers:              []*corev3.HeaderValueOption{hvo("x-a", "1"), hvoAppend("x-a", "2"), hvo("x-b", "3"), hvo(DecisionIDHeader, "d-1")},
				HeadersToRemove:      []string{"x-debug"},
				ResponseHeadersToAdd: []*corev3.HeaderValueOption{hvo("x-frame-options", "DENY"), idReply},
			}},
			DynamicMetadata: idMetadata("d-1"),
		}},
		{"deny", Deny(Result{Reason: `no flow allows "GET /"`, HTTPStatus: 403}, "d-1"),
			denied(code.Code_PERMISSION_DENIED, `no flow allows "GET /"`, 403, jsonBody(`no flow allows "GET /"`),
				hvo("content-type", "application/json"), hvo(DecisionIDHeader, "d-1"))},
		{"deny defaults", Deny(Result{}, "d-1"),
			denied(code.Code_PERMISSION_DENIED, "denied by policy", 403, jsonBody("denied by policy"),
				hvo("content-type", "application/json"), hvo(DecisionIDHeader, "d-1"))},
		{"deny with policy headers", Deny(Result{Reason: "r", HTTPStatus: 418, Headers: []Header{{"x-reason", "no-deletes"}}}, "d-1"),
			denied(code.Code_PERMISSION_DENIED, "r", 418, jsonBody("r"),
				hvo("x-reason", "no-deletes"), hvo("content-type", "application/json"), hvo(DecisionIDHeader, "d-1"))},
		{"deny with the policy's body and content type", Deny(Result{Reason: "r", Body: "<p>no</p>", Headers: []Header{{"Content-Type", "text/html"}}}, "d-1"),
			denied(code.Code_PERMISSION_DENIED, "r", 403, "<p>no</p>", hvo("Content-Type", "text/html"), hvo(DecisionIDHeader, "d-1"))},
		{"deny with the policy's body is not labelled JSON", Deny(Result{Reason: "r", Body: "deletes are not allowed here"}, "d-1"),
			denied(code.Code_PERMISSION_DENIED, "r", 403, "deletes are not allowed here", hvo(DecisionIDHeader, "d-1"))},
		{"deny with the policy's content type for Vigil's body", Deny(Result{Reason: "r", Headers: []Header{{"content-type", "application/problem+json"}}}, "d-1"),
			denied(code.Code_PERMISSION_DENIED, "r", 403, jsonBody("r"), hvo("content-type", "application/problem+json"), hvo(DecisionIDHeader, "d-1"))},
		{"rate limited", Deny(Result{Reason: "rate limit", HTTPStatus: 429}, "d-1"),
			denied(code.Code_RESOURCE_EXHAUSTED, "rate limit", 429, jsonBody("rate limit"),
				hvo("content-type", "application/json"), hvo(DecisionIDHeader, "d-1"))},
		{"unauthenticated", Unauthenticated("no verified client identity", "d-1"),
			denied(code.Code_UNAUTHENTICATED, "no verified client identity", 401, jsonBody("no verified client identity"),
				hvo("content-type", "application/json"), hvo(DecisionIDHeader, "d-1"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !proto.Equal(tc.got, tc.want) {
				opts := prototext.MarshalOptions{Multiline: true}
				t.Errorf("response:\n%s\nwant:\n%s", opts.Format(tc.got), opts.Format(tc.want))
			}
		})
	}
}

// TestDenialBodyEscapes checks that a reason cannot break out of the JSON.
func TestDenialBodyEscapes(t *testing.T) {
	reason := "quote \" backslash \\ newline \n tag </script> \x00"
	resp := Deny(Result{Reason: reason}, `id"1`)
	var body struct {
		DecisionID string `json:"decision_id"`
		Reason     string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body); err != nil {
		t.Fatalf("body %q: %v", resp.GetDeniedResponse().GetBody(), err)
	}
	if body.Reason != reason || body.DecisionID != `id"1` {
		t.Errorf("body decodes to %+v", body)
	}
}
