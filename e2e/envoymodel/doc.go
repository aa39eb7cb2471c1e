// Package envoymodel models what an Envoy proxy does with one downstream
// HTTP request, given the listeners, routes, clusters and endpoints a
// Vigil member serves it (ParseDump reads `vigil xds dump`). No Envoy
// binary runs where Vigil is built, so the e2e conformance test uses this
// model, with the member's real ext_authz service answering the checks, to
// find configurations that Envoy would accept but enforce differently from
// what Vigil means.
//
// The model reads everything from the resources; it knows nothing of
// Vigil's translator. Configuration it does not model is an error (tests
// fail), never a guess. It is written from Envoy's documentation and
// source (envoyproxy/envoy, main branch as stored in mid 2025, and the API
// comments of go-control-plane/envoy v1.40.0); no Envoy code is copied.
//
// # Modelled behaviour, in Envoy's order
//
// Listener and TLS. The listener is the one bound to the connection's
// port; it must have exactly one filter chain (no filter_chain_match) whose
// only network filter is the HTTP connection manager. A TLS transport
// socket's certificate and trust bundle come from SDS (SecretSource, the
// SPIRE agent's role). A downstream peer must present a certificate when
// require_client_certificate is set; it must chain to the validation
// context's CAs, and when the (default or combined) validation context has
// match_typed_subject_alt_names or match_subject_alt_names, one SAN of the
// right type must match. The peer's identity is its first URI SAN (then DNS
// SAN, then subject).
//   - api: envoy/extensions/transport_sockets/tls/v3/{tls,common}.proto
//     (DownstreamTlsContext.require_client_certificate,
//     CertificateValidationContext.match_typed_subject_alt_names,
//     CommonTlsContext.combined_validation_context)
//
// Connection manager request headers, before any filter
// (ConnectionManagerImpl::ActiveStream::decodeHeaders):
//   - headers_with_underscores_action REJECT_REQUEST (400) / DROP_HEADER;
//   - mutateRequestHeaders: hop-by-hop headers removed; with
//     use_remote_address the peer address is appended to x-forwarded-for
//     and x-forwarded-proto set (else set only when absent); a request with
//     one private/loopback XFF address is internal (x-envoy-internal: true),
//     else x-envoy-external-address; x-request-id generated for edge
//     requests or when absent;
//   - mutateXfccRequestHeader: ALWAYS_FORWARD_ONLY keeps the header;
//     SANITIZE, or a connection without a peer certificate, removes it;
//     FORWARD_ONLY keeps it; APPEND_FORWARD and SANITIZE_SET build
//     "By=<first URI SAN of the local certificate>;Hash=<hex SHA-256 of the
//     peer certificate DER>" followed by set_current_client_cert_details in
//     the order Cert, Chain, Subject, URI (every URI SAN, or "URI=" when
//     none), DNS, joined with ";"; APPEND_FORWARD appends it after "," and
//     SANITIZE_SET replaces the header. This happens before any HTTP
//     filter, so every filter (RBAC, ext_authz) sees the new header.
//   - maybeNormalizePath: a path with a fragment is refused (400);
//     path_with_escaped_slashes_action (%2F, %5C) REJECT_REQUEST (400),
//     UNESCAPE_AND_REDIRECT, UNESCAPE_AND_FORWARD; normalize_path (dot
//     segments, percent-decoded unreserved characters, \ to /; an
//     approximation of the Chromium canonicalizer Envoy uses); then
//     merge_slashes.
//   - maybeNormalizeHost: strip_trailing_host_dot, strip_any_host_port,
//     strip_matching_host_port.
//   - source: source/common/http/conn_manager_utility.cc
//     (ConnectionManagerUtility::mutateRequestHeaders,
//     mutateXfccRequestHeader, maybeNormalizePath, maybeNormalizeHost);
//     source/extensions/filters/network/http_connection_manager/config.cc
//     (order of set_current_client_cert_details);
//     docs: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#x-forwarded-client-cert;
//     api: http_connection_manager.proto (set_current_client_cert_details:
//     "Hash is always set, and By is always set when the client
//     certificate presents the URI type Subject Alternative Name value").
//
// Route selection. The virtual host is chosen by the lower-cased
// :authority: an exact domain, else the longest "*suffix" domain, else the
// longest "prefix*" domain, else "*". Its routes are tried in order and the
// first match wins: prefix, path, path_separated_prefix or safe_regex on
// the path without query (case_sensitive honoured), and every header
// matcher (pseudo-headers such as :method included). Header matchers join
// a repeated header's values with ","; an absent header matches only
// present_match: false (inverted: present_match: true) unless
// treat_missing_header_as_empty. String matchers: exact, prefix, suffix,
// contains (ignore_case), safe_regex. Regexes are full matches, run with
// Go's regexp (RE2 syntax, an approximation of Envoy's RE2).
//   - docs: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/route_matching
//     ("Each route entry in the virtual host is checked, in order. If there
//     is a match, the route is used and no further route checks are made.")
//   - source: source/common/router/config_impl.cc (RouteMatcher::findVirtualHost,
//     VirtualHostImpl::getRouteFromEntries); source/common/http/header_utility.cc
//     (HeaderUtility::matchHeaders); api: envoy/type/matcher/v3/regex.proto
//     ("matched against the full string, not as a partial match").
//
// Per-filter configuration. typed_per_filter_config is looked up on the
// route, then the virtual host, then the route configuration; the most
// specific one replaces the filter's config (not merged), except that
// ext_authz merges context_extensions from the least to the most specific
// (as Envoy does; Vigil sets them on routes only). A
// config.route.v3.FilterConfig wrapper is unwrapped and its disabled flag
// honoured; an HttpFilter with disabled: true runs only where a route
// configures it. Without a route no per-filter config applies.
//   - source: config_impl.cc (RouteEntryImplBase / CommonVirtualHostImpl
//     mostSpecificPerFilterConfig, perFilterConfigs: parent first);
//     source/extensions/filters/http/ext_authz/ext_authz.cc
//     (FilterConfigPerRoute::merge, getMergedPerFilterConfig).
//
// HTTP filters run in the listener's order; the first local reply ends the
// request.
//
// RBAC (envoy.filters.http.rbac): the most specific RBACPerRoute replaces
// the listener's config; an RBACPerRoute without rbac turns the filter off
// for the route; a config without rules enforces nothing, one with empty
// rules denies everything. Policies are evaluated in lexicographic order;
// a policy matches when some permission and some principal match. ALLOW
// admits what some policy matches, DENY refuses it, LOG admits all; a
// refusal is 403 "RBAC: access denied". Permissions: any, header, url_path
// (path without query), and_rules, or_rules, not_rule, destination_port,
// requested_server_name. Principals: any, authenticated (no principal_name:
// any peer certificate; else any URI SAN, then any DNS SAN, then the
// subject must match), header, url_path, and_ids, or_ids, not_id,
// direct_remote_ip, remote_ip. CEL conditions and matcher trees are not
// modelled.
//   - api: envoy/extensions/filters/http/rbac/v3/rbac.proto ("If absent, no
//     RBAC enforcement occurs. If set but empty, all requests are denied";
//     RBACPerRoute "If absent, RBAC policy will be disabled for this
//     route"); envoy/config/rbac/v3/rbac.proto (actions, "evaluated in
//     lexicographic order of the policy name", Principal.Authenticated).
//
// Local rate limit (envoy.filters.http.local_ratelimit): recorded, not
// enforced. The most specific per-route LocalRateLimit replaces the
// listener's; filter_enabled and filter_enforced default to 0%. When the
// config has descriptors, the request's descriptors come from the route's
// rate_limits of the filter's stage (and the virtual host's per
// vh_rate_limits: OVERRIDE when the route has none, INCLUDE, IGNORE);
// actions generic_key (key "generic_key" by default), request_headers
// (skip_if_absent), remote_address, destination_cluster,
// header_value_match. A configured descriptor whose entries equal a
// request descriptor's is spent; the default token bucket too when none
// matched or always_consume_default_token_bucket (default true).
//   - source: source/extensions/filters/http/local_ratelimit/local_ratelimit.cc
//     (Filter::populateDescriptors, getConfig via
//     resolveMostSpecificPerFilterConfig); api: local_rate_limit.proto
//     (filter_enabled "Defaults to 0% of requests for safety"; descriptors
//     "must match verbatim").
//
// ext_authz (envoy.filters.http.ext_authz, gRPC service): skipped without a
// route or when the most specific ExtAuthzPerRoute is disabled: true. The
// CheckRequest has source {address, principal, certificate when
// include_peer_certificate}, destination {principal of the local
// certificate}, request.http {method, path (with query), host (the
// :authority), scheme, headers}, context_extensions (merged, see above)
// and tls_session when include_tls_session. Headers are every request
// header as the filter sees it (pseudo-headers included, repeated ones
// joined with ","; header_map with raw values under encode_raw_headers),
// minus x-envoy-auth-partial-body, minus any whose name matches
// disallowed_headers, and, when allowed_headers is set, minus any whose
// name it does not match (disallowed wins). The request goes to the
// cluster of grpc_service.envoy_grpc (a per-route check_settings
// grpc_service overrides it): its first endpoint, over its transport
// socket (client certificate from SDS; the server checked against the
// validation context and SAN matchers, no host name check), within
// grpc_service.timeout (Proxy.AuthzTimeout may replace it). An OK answer
// applies ok_response headers (append: true appends to an existing
// header, else set) and headers_to_remove (not pseudo-headers or host); a
// non-OK answer is a local reply with denied_response's status (403 by
// default) and body; a failed call answers status_on_error (403) unless
// failure_mode_allow.
//   - source: source/extensions/filters/http/ext_authz/ext_authz.cc
//     (Filter::decodeHeaders, getPerRouteFlags, initiateCall, onComplete);
//     source/extensions/filters/common/ext_authz/check_request_utils.cc
//     (setAttrContextPeer, setHttpRequest, createHttpCheck);
//     source/extensions/filters/common/ext_authz/ext_authz_grpc_impl.cc
//     (GrpcClientImpl::onSuccess);
//     api: https://www.envoyproxy.io/docs/envoy/v1.40.0/api-v3/extensions/filters/http/ext_authz/v3/ext_authz.proto
//     (allowed_headers: "If this option isn't specified, then all client
//     request headers are included in the check request to a gRPC
//     authorization server"; disallowed_headers "overrides the above
//     allowed_headers if a header matches both").
//
// Router (envoy.filters.http.router): no route answers 404; a
// direct_response answers its status and inline body; a redirect 301; a
// route action to a cluster that was not sent answers
// cluster_not_found_response_code (503); otherwise the request is
// forwarded with prefix_rewrite and host_rewrite_literal applied and the
// request_headers_to_remove/add of the route, virtual host and route
// configuration, in that order. Forward then carries it to the next
// modelled proxy over the cluster's first endpoint: the client presents
// the cluster's SDS certificate and refuses a server certificate that
// fails the cluster's validation context.
//
// Access logs (access_log of the connection manager; accesslog.go):
// stdout and gRPC (http_grpc) loggers are checked as Envoy checks them
// when it loads the listener: a gRPC logger needs transport_api_version
// V3 and a static cluster of the Proxy's Bootstrap (ParseBootstrap), not
// one from CDS. Each request that got an answer or was forwarded records,
// per logger, the HTTPAccessLogEntry Envoy would send (Outcome.AccessLogs)
// and, for gRPC, the stream identifier (the bootstrap's node).
//   - source: source/extensions/access_loggers/grpc/ (http_config.cc,
//     http_grpc_access_log_impl.cc, grpc_access_log_utils.cc,
//     config_utils.cc); envoyproxy/envoy#2360, #17908 (static cluster).
//
// # Not modelled
//
// HTTP/1 and HTTP/2 codec validation, request bodies (with_request_body),
// timeouts and retries, x-envoy-* headers the router adds upstream (e.g.
// x-envoy-expected-rq-timeout-ms), the internal_address_config and
// xff_num_trusted_hops variants, scoped routes and VHDS, weighted clusters,
// CEL and matcher-tree RBAC, ext_authz over HTTP and its metadata
// contexts, query-parameter matching and mutations, header value
// formatters, access log filters and formats, load balancing, health
// checks and outlier detection, SNI filter chain selection, CRLs and
// SPKI/hash pinning, certificate expiry beyond what crypto/x509 checks,
// and enforcing rate limits.
package envoymodel
