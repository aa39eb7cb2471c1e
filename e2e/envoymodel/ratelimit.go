package envoymodel

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// localRateLimit is envoy.filters.http.local_ratelimit, recorded rather
// than enforced: the most specific per-route LocalRateLimit replaces the
// listener's; filter_enabled and filter_enforced default to 0%; when the
// config has descriptors, the request's descriptors come from the route's
// rate_limits of the filter's stage (and the virtual host's, per
// vh_rate_limits), or from the filter's own rate_limits; each descriptor
// that equals a configured one spends that bucket, and the default bucket
// is spent too when none matched or always_consume_default_token_bucket
// (default true).
func (p *Proxy) localRateLimit(name string, cfgAny *anypb.Any, sel *selected, c *conn, h hmap, o *Outcome) error {
	cfg := &ratelimitv3.LocalRateLimit{}
	if err := cfgAny.UnmarshalTo(cfg); err != nil {
		return err
	}
	level := "listener"
	per, err := sel.mostSpecific(name)
	if err != nil {
		return err
	}
	if per != nil {
		cfg, level = &ratelimitv3.LocalRateLimit{}, "route"
		if err := per.UnmarshalTo(cfg); err != nil {
			return fmt.Errorf("per-route config: %w", err)
		}
	}
	if cfg.GetLocalClusterRateLimit() != nil {
		return unmodelled("local_cluster_rate_limit")
	}
	use := RateLimitUse{Filter: name, Enabled: fullPercent(cfg.GetFilterEnabled()), Enforced: fullPercent(cfg.GetFilterEnforced()),
		PerConnection: cfg.GetLocalRateLimitPerDownstreamConnection()}
	if !use.Enabled {
		o.step("%s (%s config): not enabled (filter_enabled below 100%%)", name, level)
		o.RateLimits = append(o.RateLimits, use)
		return nil
	}
	var descs [][]*ratelimitcommonv3.RateLimitDescriptor_Entry
	if len(cfg.GetDescriptors()) > 0 {
		if descs, err = requestDescriptors(cfg, sel, c, h); err != nil {
			return err
		}
	}
	matched := false
	for _, d := range descs {
		use.Descriptors = append(use.Descriptors, entriesString(d))
		for _, cd := range cfg.GetDescriptors() {
			if entriesMatch(cd.GetEntries(), d) {
				matched = true
				use.Buckets = append(use.Buckets, entriesString(cd.GetEntries())+" ("+bucketString(cd.GetTokenBucket())+")")
				break
			}
		}
	}
	always := cfg.GetAlwaysConsumeDefaultTokenBucket() == nil || cfg.GetAlwaysConsumeDefaultTokenBucket().GetValue()
	if cfg.GetTokenBucket() != nil && (!matched || always) {
		use.Buckets = append(use.Buckets, "default ("+bucketString(cfg.GetTokenBucket())+")")
	}
	o.RateLimits = append(o.RateLimits, use)
	o.step("%s (%s config): enforced %v, per connection %v, descriptors %v, buckets %v", name, level, use.Enforced, use.PerConnection, use.Descriptors, use.Buckets)
	return nil
}

func fullPercent(r *corev3.RuntimeFractionalPercent) bool {
	d := r.GetDefaultValue()
	if d == nil {
		return false
	}
	den := map[typev3.FractionalPercent_DenominatorType]uint32{typev3.FractionalPercent_HUNDRED: 100,
		typev3.FractionalPercent_TEN_THOUSAND: 10000, typev3.FractionalPercent_MILLION: 1000000}[d.GetDenominator()]
	return d.GetNumerator() >= den
}

func requestDescriptors(cfg *ratelimitv3.LocalRateLimit, sel *selected, c *conn, h hmap) ([][]*ratelimitcommonv3.RateLimitDescriptor_Entry, error) {
	var policies []*routev3.RateLimit
	switch {
	case len(cfg.GetRateLimits()) > 0:
		return nil, unmodelled("the filter's own rate_limits")
	case sel.route == nil || sel.route.GetRoute() == nil:
		return nil, nil
	}
	routeLimits := stage(sel.route.GetRoute().GetRateLimits(), cfg.GetStage())
	policies = append(policies, routeLimits...)
	switch cfg.GetVhRateLimits() {
	case ratelimitcommonv3.VhRateLimitsOptions_INCLUDE:
		policies = append(policies, stage(sel.vhost.GetRateLimits(), cfg.GetStage())...)
	case ratelimitcommonv3.VhRateLimitsOptions_OVERRIDE:
		if len(sel.route.GetRoute().GetRateLimits()) == 0 {
			policies = append(policies, stage(sel.vhost.GetRateLimits(), cfg.GetStage())...)
		}
	}
	var out [][]*ratelimitcommonv3.RateLimitDescriptor_Entry
	for _, pol := range policies {
		if pol.GetDisableKey() != "" {
			continue
		}
		d, ok, err := descriptor(pol, sel, c, h)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, d)
		}
	}
	return out, nil
}

func stage(ps []*routev3.RateLimit, s uint32) []*routev3.RateLimit {
	var out []*routev3.RateLimit
	for _, p := range ps {
		if p.GetStage().GetValue() == s {
			out = append(out, p)
		}
	}
	return out
}

// descriptor is RateLimitPolicyEntryImpl::populateLocalDescriptors: every
// action adds an entry; an action that cannot drops the descriptor.
func descriptor(pol *routev3.RateLimit, sel *selected, c *conn, h hmap) ([]*ratelimitcommonv3.RateLimitDescriptor_Entry, bool, error) {
	var d []*ratelimitcommonv3.RateLimitDescriptor_Entry
	add := func(k, v string) { d = append(d, &ratelimitcommonv3.RateLimitDescriptor_Entry{Key: k, Value: v}) }
	for _, a := range pol.GetActions() {
		switch x := a.GetActionSpecifier().(type) {
		case *routev3.RateLimit_Action_GenericKey_:
			add(orDefault(x.GenericKey.GetDescriptorKey(), "generic_key"), x.GenericKey.GetDescriptorValue())
		case *routev3.RateLimit_Action_RequestHeaders_:
			v, ok := h.get(x.RequestHeaders.GetHeaderName())
			if !ok {
				if x.RequestHeaders.GetSkipIfAbsent() {
					continue
				}
				return nil, false, nil
			}
			add(x.RequestHeaders.GetDescriptorKey(), v)
		case *routev3.RateLimit_Action_RemoteAddress_:
			add("remote_address", c.remote.Addr().String())
		case *routev3.RateLimit_Action_DestinationCluster_:
			add("destination_cluster", sel.route.GetRoute().GetCluster())
		case *routev3.RateLimit_Action_HeaderValueMatch_:
			ok, err := matchHeaders(x.HeaderValueMatch.GetHeaders(), h)
			if err != nil {
				return nil, false, err
			}
			if want := x.HeaderValueMatch.GetExpectMatch(); ok != (want == nil || want.GetValue()) {
				return nil, false, nil
			}
			add(orDefault(x.HeaderValueMatch.GetDescriptorKey(), "header_match"), x.HeaderValueMatch.GetDescriptorValue())
		default:
			return nil, false, unmodelled("rate limit action %T", x)
		}
	}
	return d, len(d) > 0, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// entriesMatch: a configured descriptor matches when its entries equal the
// request's, in order (an empty configured value matches any value).
func entriesMatch(conf, req []*ratelimitcommonv3.RateLimitDescriptor_Entry) bool {
	if len(conf) != len(req) {
		return false
	}
	for i := range conf {
		if conf[i].GetKey() != req[i].GetKey() || (conf[i].GetValue() != "" && conf[i].GetValue() != req[i].GetValue()) {
			return false
		}
	}
	return true
}

func entriesString(es []*ratelimitcommonv3.RateLimitDescriptor_Entry) string {
	var parts []string
	for _, e := range es {
		parts = append(parts, e.GetKey()+"="+e.GetValue())
	}
	return strings.Join(parts, ",")
}

func bucketString(b *typev3.TokenBucket) string {
	perFill := uint32(1)
	if b.GetTokensPerFill() != nil {
		perFill = b.GetTokensPerFill().GetValue()
	}
	return fmt.Sprintf("max %d, %d per %v", b.GetMaxTokens(), perFill, b.GetFillInterval().AsDuration())
}
