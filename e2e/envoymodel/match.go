package envoymodel

import (
	"fmt"
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// hmap is a request's header map, pseudo-headers included, in order.
type hmap []Header

func (h hmap) get(name string) (string, bool) {
	var vs []string
	for _, e := range h {
		if e.Name == name {
			vs = append(vs, e.Value)
		}
	}
	return strings.Join(vs, ","), vs != nil
}

func (h *hmap) del(name string) {
	out := (*h)[:0]
	for _, e := range *h {
		if e.Name != name {
			out = append(out, e)
		}
	}
	*h = out
}

// set replaces every value of name by one (in place of the first).
func (h *hmap) set(name, value string) {
	out, done := hmap{}, false
	for _, e := range *h {
		switch {
		case e.Name != name:
			out = append(out, e)
		case !done:
			out, done = append(out, Header{name, value}), true
		}
	}
	if !done {
		out = append(out, Header{name, value})
	}
	*h = out
}

func (h *hmap) add(name, value string) { *h = append(*h, Header{name, value}) }

// request turns the header map back into a Request.
func (h hmap) request() *Request {
	r := &Request{}
	for _, e := range h {
		switch e.Name {
		case ":method":
			r.Method = e.Value
		case ":path":
			r.Path = e.Value
		case ":authority":
			r.Authority = e.Value
		case ":scheme":
			r.Scheme = e.Value
		default:
			r.Headers = append(r.Headers, e)
		}
	}
	return r
}

// unmodelled is an error for configuration the model does not cover: a
// test must fail rather than guess.
func unmodelled(format string, args ...any) error {
	return fmt.Errorf("envoymodel: not modelled: "+format, args...)
}

// matchString is Envoy's StringMatcher. safe_regex is a full match
// (type/matcher/v3/regex.proto), run with Go's RE2-compatible regexp.
func matchString(m *matcherv3.StringMatcher, s string) (bool, error) {
	if m == nil {
		return false, unmodelled("empty string matcher")
	}
	in := s
	fold := func(x string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(x)
		}
		return x
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return fold(in) == fold(p.Exact), nil
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(fold(in), fold(p.Prefix)), nil
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(fold(in), fold(p.Suffix)), nil
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(fold(in), fold(p.Contains)), nil
	case *matcherv3.StringMatcher_SafeRegex:
		return matchRegex(p.SafeRegex, s)
	}
	return false, unmodelled("string matcher %v", m)
}

func matchRegex(r *matcherv3.RegexMatcher, s string) (bool, error) {
	re, err := regexp.Compile(`^(?:` + r.GetRegex() + `)$`)
	if err != nil {
		return false, fmt.Errorf("regex %q: %w", r.GetRegex(), err)
	}
	return re.MatchString(s), nil
}

// matchHeader is Envoy's HeaderMatcher (Http::HeaderUtility::matchHeaders):
// a repeated header is matched as its values joined with ","; an absent
// header matches only present_match: false (or, inverted, present_match:
// true), unless treat_missing_header_as_empty.
func matchHeader(m *routev3.HeaderMatcher, h hmap) (bool, error) {
	v, ok := h.get(m.GetName())
	if !ok && !m.GetTreatMissingHeaderAsEmpty() {
		pm, isPresent := m.GetHeaderMatchSpecifier().(*routev3.HeaderMatcher_PresentMatch)
		if m.GetInvertMatch() {
			return isPresent && pm.PresentMatch, nil
		}
		return isPresent && !pm.PresentMatch, nil
	}
	var match bool
	var err error
	switch s := m.GetHeaderMatchSpecifier().(type) {
	case nil:
		match = true // no specifier: presence
	case *routev3.HeaderMatcher_PresentMatch:
		match = s.PresentMatch
	case *routev3.HeaderMatcher_ExactMatch:
		match = s.ExactMatch == "" || v == s.ExactMatch
	case *routev3.HeaderMatcher_PrefixMatch:
		match = strings.HasPrefix(v, s.PrefixMatch)
	case *routev3.HeaderMatcher_SuffixMatch:
		match = strings.HasSuffix(v, s.SuffixMatch)
	case *routev3.HeaderMatcher_ContainsMatch:
		match = strings.Contains(v, s.ContainsMatch)
	case *routev3.HeaderMatcher_SafeRegexMatch:
		match, err = matchRegex(s.SafeRegexMatch, v)
	case *routev3.HeaderMatcher_StringMatch:
		match, err = matchString(s.StringMatch, v)
	default:
		return false, unmodelled("header matcher %v", m)
	}
	return match != m.GetInvertMatch(), err
}

func matchHeaders(ms []*routev3.HeaderMatcher, h hmap) (bool, error) {
	for _, m := range ms {
		ok, err := matchHeader(m, h)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// pathOnly is a :path without its query and fragment.
func pathOnly(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}

// findVirtualHost is RouteMatcher::findVirtualHost: the lower-cased
// authority exactly, then the longest "*suffix", then the longest
// "prefix*", then "*".
func findVirtualHost(rc *routev3.RouteConfiguration, authority string) *routev3.VirtualHost {
	host := strings.ToLower(authority)
	if rc.GetIgnorePortInHostMatching() {
		host = stripPort(host)
	}
	var best *routev3.VirtualHost
	bestLen, bestKind := -1, 4
	for _, vh := range rc.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			d = strings.ToLower(d)
			kind, n := 4, 0
			switch {
			case d == "*":
				kind = 3
			case strings.HasPrefix(d, "*"):
				if len(host) > len(d)-1 && strings.HasSuffix(host, d[1:]) {
					kind, n = 1, len(d)-1
				}
			case strings.HasSuffix(d, "*"):
				if len(host) > len(d)-1 && strings.HasPrefix(host, d[:len(d)-1]) {
					kind, n = 2, len(d)-1
				}
			case d == host:
				kind = 0
			}
			if kind < bestKind || (kind == bestKind && n > bestLen) {
				best, bestKind, bestLen = vh, kind, n
			}
		}
	}
	if bestKind == 4 {
		return nil
	}
	return best
}

// matchRoute is RouteEntryImplBase::matchRoute for the path specifiers and
// headers Vigil uses; query parameters, cookies, runtime fractions, gRPC
// and TLS context matches are not modelled.
func matchRoute(m *routev3.RouteMatch, h hmap) (bool, error) {
	if len(m.GetQueryParameters()) > 0 || len(m.GetCookies()) > 0 || m.GetRuntimeFraction() != nil ||
		m.GetGrpc() != nil || m.GetTlsContext() != nil || len(m.GetDynamicMetadata()) > 0 || m.GetFilterState() != nil {
		return false, unmodelled("route match %v", m)
	}
	path, _ := h.get(":path")
	path = pathOnly(path)
	cs := m.GetCaseSensitive() == nil || m.GetCaseSensitive().GetValue()
	eq := func(a, b string) bool { return a == b || (!cs && strings.EqualFold(a, b)) }
	var ok bool
	switch s := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		ok = len(path) >= len(s.Prefix) && eq(path[:len(s.Prefix)], s.Prefix)
	case *routev3.RouteMatch_Path:
		ok = eq(path, s.Path)
	case *routev3.RouteMatch_PathSeparatedPrefix:
		p := s.PathSeparatedPrefix
		ok = len(path) >= len(p) && eq(path[:len(p)], p) && (len(path) == len(p) || path[len(p)] == '/')
	case *routev3.RouteMatch_SafeRegex:
		var err error
		if ok, err = matchRegex(s.SafeRegex, path); err != nil {
			return false, err
		}
	default:
		return false, unmodelled("path specifier %T", s)
	}
	if !ok {
		return false, nil
	}
	return matchHeaders(m.GetHeaders(), h)
}

// selected is the route table entry a request resolved to.
type selected struct {
	config *routev3.RouteConfiguration
	vhost  *routev3.VirtualHost
	route  *routev3.Route // nil when no route matched
}

// perFilter returns the typed_per_filter_config for filter name, levels
// from least to most specific (route configuration, virtual host, route;
// config_impl.cc perFilterConfigs). Each entry is unwrapped from a
// config.route.v3.FilterConfig when wrapped; disabled says whether that
// level's wrapper disables the filter.
func (s *selected) perFilter(name string) (levels []*anypb.Any, disabled *bool, err error) {
	if s == nil || s.route == nil {
		return nil, nil, nil
	}
	for _, m := range []map[string]*anypb.Any{s.config.GetTypedPerFilterConfig(), s.vhost.GetTypedPerFilterConfig(), s.route.GetTypedPerFilterConfig()} {
		a, ok := m[name]
		if !ok {
			continue
		}
		if a.MessageIs(&routev3.FilterConfig{}) {
			fc := &routev3.FilterConfig{}
			if err := a.UnmarshalTo(fc); err != nil {
				return nil, nil, err
			}
			d := fc.GetDisabled()
			disabled = &d
			if fc.GetConfig() == nil {
				continue
			}
			a = fc.GetConfig()
		}
		levels = append(levels, a)
	}
	return levels, disabled, nil
}

// mostSpecific is the most specific per-filter config (replacing, not
// merging: Router::RouteEntryImplBase::mostSpecificPerFilterConfig).
func (s *selected) mostSpecific(name string) (*anypb.Any, error) {
	levels, _, err := s.perFilter(name)
	if err != nil || len(levels) == 0 {
		return nil, err
	}
	return levels[len(levels)-1], nil
}
