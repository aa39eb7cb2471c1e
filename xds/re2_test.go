package xds

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Envoy compiles every safe_regex with Google RE2 and rejects (NACKs) the
// whole resource when the regex's RE2 program size exceeds the error
// level, 100 by default (runtime re2.max_program_size.error_level, or the
// deprecated google_re2.max_program_size of the matcher when set). A
// regex that grows with the topology (an alternation of quarantined
// devices, say) passes every small test and breaks a real deployment.
//
// The tests here walk every resource Translate produces, for every golden
// case and for stress cases, and collect every regex. TestRE2Syntax (pure
// Go) checks that each parses as RE2 syntax; TestRE2ProgramSize
// (re2_cgo_test.go, -tags re2, links libre2) measures each with RE2 itself.

// re2DefaultMaxProgramSize is Envoy's default re2.max_program_size.error_level.
const re2DefaultMaxProgramSize = 100

// foundRegex is one regex of a translation: the case, where it is in the
// resource, the pattern, and the program size Envoy allows it.
type foundRegex struct {
	Case  string
	Path  string
	Regex string
	Limit uint64
}

func (f foundRegex) String() string {
	return fmt.Sprintf("%s: %s: %q (limit %d)", f.Case, f.Path, f.Regex, f.Limit)
}

// regexMatcherNames are the messages holding an RE2 pattern in `regex`:
// Envoy's (v3 and older) and the xDS (cncf) matcher's. Others that embed
// one (RegexMatchAndSubstitute.pattern, StringMatcher.safe_regex,
// RouteMatch.safe_regex, HeaderMatcher.safe_regex_match...) are found by
// walking into them.
var regexMatcherNames = map[protoreflect.FullName]bool{
	"envoy.type.matcher.v3.RegexMatcher": true,
	"envoy.type.matcher.RegexMatcher":    true,
	"xds.type.matcher.v3.RegexMatcher":   true,
}

// regexWalker collects the regexes of resources, failing on an Any it
// cannot unpack (an unregistered type would hide its contents).
type regexWalker struct {
	caseName string
	found    []foundRegex
	errs     []string
}

func (w *regexWalker) resource(kind string, m proto.Message) {
	w.message(kind+"/"+name(m), m.ProtoReflect())
}

func (w *regexWalker) message(path string, m protoreflect.Message) {
	desc := m.Descriptor()
	if desc.FullName() == "google.protobuf.Any" {
		a, ok := m.Interface().(*anypb.Any)
		if !ok {
			// A dynamic Any: go through bytes.
			b, err := proto.Marshal(m.Interface())
			a = new(anypb.Any)
			if err == nil {
				err = proto.Unmarshal(b, a)
			}
			if err != nil {
				w.errs = append(w.errs, fmt.Sprintf("%s: %v", path, err))
				return
			}
		}
		inner, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
		if err != nil {
			w.errs = append(w.errs, fmt.Sprintf("%s: cannot unpack %s: %v (import its package)", path, a.GetTypeUrl(), err))
			return
		}
		w.message(path+"<"+string(inner.ProtoReflect().Descriptor().FullName())+">", inner.ProtoReflect())
		return
	}
	if regexMatcherNames[desc.FullName()] {
		w.matcher(path, m)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		fpath := path + "." + string(fd.Name())
		switch {
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if fd.MapValue().Message() != nil {
					w.message(fpath+"["+strconv.Quote(k.String())+"]", mv.Message())
				}
				return true
			})
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if fd.Message() != nil {
					w.message(fmt.Sprintf("%s[%d]", fpath, i), l.Get(i).Message())
				} else if fd.Kind() == protoreflect.StringKind {
					w.regexString(fpath, fd, l.Get(i).String())
				}
			}
		case fd.Message() != nil:
			w.message(fpath, v.Message())
		case fd.Kind() == protoreflect.StringKind && !regexMatcherNames[desc.FullName()]:
			w.regexString(fpath, fd, v.String())
		}
		return true
	})
}

// matcher records a RegexMatcher's pattern with its limit: the deprecated
// google_re2.max_program_size when set, else Envoy's default error level.
func (w *regexWalker) matcher(path string, m protoreflect.Message) {
	fd := m.Descriptor().Fields().ByName("regex")
	if fd == nil {
		w.errs = append(w.errs, path+": a RegexMatcher without a regex field")
		return
	}
	limit := uint64(re2DefaultMaxProgramSize)
	if g := m.Descriptor().Fields().ByName("google_re2"); g != nil && m.Has(g) {
		gm := m.Get(g).Message()
		if mp := gm.Descriptor().Fields().ByName("max_program_size"); mp != nil && gm.Has(mp) {
			if u, ok := gm.Get(mp).Message().Interface().(*wrapperspb.UInt32Value); ok {
				limit = uint64(u.GetValue())
			}
		}
	}
	w.found = append(w.found, foundRegex{Case: w.caseName, Path: path + ".regex", Regex: m.Get(fd).String(), Limit: limit})
}

// regexString records a string field that is named as a regex outside a
// RegexMatcher (a deprecated plain `regex` field, say): Envoy compiles
// those too.
func (w *regexWalker) regexString(path string, fd protoreflect.FieldDescriptor, s string) {
	if !strings.Contains(strings.ToLower(string(fd.Name())), "regex") {
		return
	}
	w.found = append(w.found, foundRegex{Case: w.caseName, Path: path, Regex: s, Limit: re2DefaultMaxProgramSize})
}

// translationRegexes translates one case and returns its regexes.
func translationRegexes(t *testing.T, caseName, path string) []foundRegex {
	t.Helper()
	snap, node, opts := loadCase(t, path)
	res, err := Translate(snap, node, opts)
	if err != nil {
		t.Fatalf("%s: %v", caseName, err)
	}
	w := &regexWalker{caseName: caseName}
	for _, kind := range []struct {
		name string
		list []proto.Message
	}{
		{"listener", asMessages(res.Listeners)}, {"route", asMessages(res.Routes)},
		{"cluster", asMessages(res.Clusters)}, {"endpoint", asMessages(res.Endpoints)},
	} {
		for _, m := range kind.list {
			w.resource(kind.name, m)
		}
	}
	for _, e := range w.errs {
		t.Errorf("%s: %s", caseName, e)
	}
	slices.SortFunc(w.found, func(a, b foundRegex) int { return strings.Compare(a.Path, b.Path) })
	return w.found
}

func asMessages[T proto.Message](rs []T) []proto.Message {
	out := make([]proto.Message, len(rs))
	for i, r := range rs {
		out[i] = r
	}
	return out
}

// re2Cases are the golden inputs (testdata/in) and the stress cases
// (written to dir in the same format): name → input file.
func re2Cases(t *testing.T) [][2]string {
	t.Helper()
	inputs, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	var cases [][2]string
	for _, in := range inputs {
		cases = append(cases, [2]string{strings.TrimSuffix(filepath.Base(in), ".yaml"), in})
	}
	dir := t.TempDir()
	abs, err := filepath.Abs(smartCity)
	if err != nil {
		t.Fatal(err)
	}
	example, err := filepath.Rel(dir, abs)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range re2StressCases(example) {
		p := filepath.Join(dir, s[0]+".yaml")
		if err := os.WriteFile(p, []byte(s[1]), 0o644); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, [2]string{"stress/" + s[0], p})
	}
	return cases
}

// allMethods are the nine methods a flow may name.
var allMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}

// longName is a valid 60-character name ending in i.
func longName(prefix string, i int) string {
	s := fmt.Sprintf("-%03d", i)
	return prefix + strings.Repeat("x", 60-len(prefix)-len(s)) + s
}

// distinctLongName is a valid 60-character name that differs from the
// others from its first character: RE2 factors the common prefixes of an
// alternation, so names that differ early make the largest program.
func distinctLongName(i int) string {
	s := fmt.Sprintf("%c%c-", 'a'+i%26, 'a'+i/26%26)
	return s + strings.Repeat("m", 60-len(s)-4) + fmt.Sprintf("-%03d", i)
}

// re2StressCases are topologies sized to make a growing regex show: a
// gateway with up to 50 quarantined devices of 60-character names (seen by
// the edge, which admits the gateway for its other devices, and by the
// gateway itself), a flow with all nine methods, and many flows with
// methods lists of every length; and the smart-city example (at example,
// relative to the case) as its cloud edge sees it with a few devices of a
// gateway quarantined. Each is {name, case YAML}.
func re2StressCases(example string) [][2]string {
	const quarantinedMax = 50
	gw1, gw2 := longName("gw-", 1), longName("gw-", 2)
	var devices, quarantined []string
	for i := range quarantinedMax + 2 {
		n := distinctLongName(i)
		devices = append(devices, fmt.Sprintf("    - {name: %s, class: meter, gateway: %s}", n, gw1))
		quarantined = append(quarantined, "device/"+n)
	}
	// Twelve services, each with a flow from the meters on 1..9 methods
	// (the first on all nine) and three paths, and one from zone north on
	// the other end of the method list.
	var services, flows []string
	for s := range 12 {
		svc := longName("svc-", s)
		services = append(services, fmt.Sprintf(`    - name: %s
      zone: cloud
      protocol: http
      hosts: [%s.city.example]
      endpoints: ["10.1.%d.1:%d"]
      backends: ["127.0.0.1:%d"]`, svc, svc, s, 8443+s, 9000+s))
		methods := allMethods[:s%len(allMethods)+1]
		if s == 0 {
			methods = allMethods
		}
		flows = append(flows, fmt.Sprintf(`    - name: %s
      from: {classes: [meter]}
      to: {service: %s}
      http: {methods: [%s], paths: ["/a/*", "/b", "/%s/*"]}`, longName("flow-", s), svc, strings.Join(methods, ", "), strings.Repeat("p", 50)))
		flows = append(flows, fmt.Sprintf(`    - name: %s
      from: {zones: [north]}
      to: {service: %s}
      http: {methods: [%s]}`, longName("zflow-", s), svc, strings.Join(allMethods[len(allMethods)-len(methods):], ", ")))
	}
	topo := fmt.Sprintf(`topology:
  apiVersion: vigil/v1
  trustDomain: %s.example
  zones: [{name: north}, {name: cloud}]
  gateways:
    - {name: %s, zone: north}
    - {name: %s, zone: north}
  deviceClasses: [{name: meter}]
  devices:
%s
    - {name: other-meter, class: meter, gateway: %s}
  services:
%s
  flows:
%s
`, strings.Repeat("t", 60), gw1, gw2, strings.Join(devices, "\n"), gw2, strings.Join(services, "\n"), strings.Join(flows, "\n"))
	q := func(n int) string { return "quarantined: [" + strings.Join(quarantined[:n], ", ") + "]\n" }
	const opts = "options:\n  authzEndpoints: [\"10.0.0.1:9191\"]\n"
	edge := "note: stress\nnode: " + strings.Repeat("e", 60) + "\ncluster: cloud\n"
	var cases [][2]string
	for _, n := range []int{0, 1, 2, 3, 5, 10, quarantinedMax} {
		cases = append(cases, [2]string{fmt.Sprintf("edge-%d-quarantined-long-names", n), edge + q(n) + opts + topo})
	}
	city := "note: stress\nnode: edge-1\ncluster: cloud\ntopologyFile: " + example + "\n"
	return append(cases,
		[2]string{"smart-city-edge-2-quarantined", city + "quarantined: [device/slc-n1-003, device/aq-n1-002]\n"},
		[2]string{"smart-city-edge-3-quarantined", city + "quarantined: [device/slc-n1-003, device/aq-n1-002, device/cam-n1-002]\n"},
		[2]string{"smart-city-edge-5-quarantined", city + "quarantined: [device/slc-n1-003, device/aq-n1-002, device/cam-n1-002, device/slc-n1-007, device/aq-n1-004]\n"},
		[2]string{"gateway-50-quarantined-long-names", "note: stress\nnode: " + gw1 + "\n" + q(quarantinedMax) + opts + topo},
		[2]string{"other-gateway", "note: stress\nnode: " + gw2 + "\n" + q(quarantinedMax) + opts + topo},
	)
}

// allTranslationRegexes is every regex of every case.
func allTranslationRegexes(t *testing.T) []foundRegex {
	t.Helper()
	var all []foundRegex
	for _, c := range re2Cases(t) {
		all = append(all, translationRegexes(t, c[0], c[1])...)
	}
	return all
}

// regexGroup is one distinct regex (and limit) with where it was first
// found and how often.
type regexGroup struct {
	foundRegex
	Count int
}

func (g regexGroup) String() string {
	return fmt.Sprintf("%q (limit %d), %d time(s), first at %s: %s", g.Regex, g.Limit, g.Count, g.Case, g.Path)
}

// distinctRegexes groups found by regex and limit, in order of first sight.
func distinctRegexes(found []foundRegex) []regexGroup {
	var groups []regexGroup
	at := make(map[[2]string]int)
	for _, f := range found {
		k := [2]string{f.Regex, strconv.FormatUint(f.Limit, 10)}
		if i, ok := at[k]; ok {
			groups[i].Count++
			continue
		}
		at[k] = len(groups)
		groups = append(groups, regexGroup{foundRegex: f, Count: 1})
	}
	return groups
}

// TestRE2Syntax checks that every regex Translate emits, in every golden
// and stress case, parses as RE2 syntax (Go's regexp/syntax with Perl
// flags accepts the language of RE2's default options), and lists them.
func TestRE2Syntax(t *testing.T) {
	found := allTranslationRegexes(t)
	if len(found) == 0 {
		t.Log("no regex emitted")
		return
	}
	groups := distinctRegexes(found)
	t.Logf("%d regexes emitted, %d distinct", len(found), len(groups))
	for _, g := range groups {
		t.Log(g)
		if _, err := syntax.Parse(g.Regex, syntax.Perl); err != nil {
			t.Errorf("%s does not parse as RE2: %v", g, err)
		}
	}
}

// TestRE2WalkerFindsRegexes makes sure the walker is not blind: it must
// find regexes nested in lists, maps and Any fields.
func TestRE2WalkerFindsRegexes(t *testing.T) {
	m := re2WalkerProbe()
	w := &regexWalker{caseName: "probe"}
	w.resource("route", m)
	for _, e := range w.errs {
		t.Error(e)
	}
	var got []string
	for _, f := range w.found {
		got = append(got, f.Regex+"@"+strconv.FormatUint(f.Limit, 10))
	}
	slices.Sort(got)
	want := []string{"^(GET|POST)$@100", "^/in-any/.*$@100", "^/rewrite/(.*)$@100", "x+@500"}
	if !slices.Equal(got, want) {
		t.Errorf("walker found %q, want %q", got, want)
	}
}

// re2WalkerProbe is a route configuration with regexes in a list of
// header matchers, a regex rewrite with its own program size limit, and a
// route inside an Any in a map.
func re2WalkerProbe() *routev3.RouteConfiguration {
	inAny, err := anypb.New(&routev3.Route{Match: &routev3.RouteMatch{
		PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "^/in-any/.*$"}},
	}})
	if err != nil {
		panic(err)
	}
	return &routev3.RouteConfiguration{Name: "probe", VirtualHosts: []*routev3.VirtualHost{{
		Name: "vh", Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Match: &routev3.RouteMatch{
				PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
				Headers: []*routev3.HeaderMatcher{{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
					StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{
						SafeRegex: &matcherv3.RegexMatcher{Regex: "^(GET|POST)$"},
					}},
				}}},
			},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"},
				RegexRewrite: &matcherv3.RegexMatchAndSubstitute{
					Pattern:      &matcherv3.RegexMatcher{Regex: "^/rewrite/(.*)$"},
					Substitution: "/\\1",
				},
			}},
			TypedPerFilterConfig: map[string]*anypb.Any{"probe": inAny},
		}, {
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
				EngineType: &matcherv3.RegexMatcher_GoogleRe2{GoogleRe2: &matcherv3.RegexMatcher_GoogleRE2{
					MaxProgramSize: wrapperspb.UInt32(500),
				}},
				Regex: "x+",
			}}},
			Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 404}},
		}},
	}}}
}
