package xds

import (
	"math"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vigil-iot/vigil/topology"
)

const (
	localRateLimitFilterName = "envoy.filters.http.local_ratelimit"
	rateLimitStatPrefix      = "vigil_rate_limit"
	// rateLimitDescriptorKey is the descriptor entry a rate-limited route
	// emits (generic_key), valued with its spec's key.
	rateLimitDescriptorKey = "vigil_route"
	// defaultFillInterval is the fill interval of the default bucket;
	// every descriptor's fill interval must be a multiple of it (Envoy's
	// rule), and rates are per second, minute or hour.
	defaultFillInterval = time.Second
)

// localRateLimitFilter is present with no bucket of its own: only routes
// that carry the gateway's rate limit configuration are limited.
func localRateLimitFilter() *hcmv3.HttpFilter {
	cfg := &ratelimitv3.LocalRateLimit{StatPrefix: rateLimitStatPrefix}
	return &hcmv3.HttpFilter{Name: localRateLimitFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

// grantRate is the budget a route of g enforces at the gateway:
//
//   - the flow's rateLimit when it has one (the authorizer's per-device,
//     per-flow budget);
//   - otherwise the most generous default rate among the device classes of
//     this gateway the flow applies to, and no limit if any of those classes
//     has none. A route cannot tell classes apart, and the gateway bucket
//     must never refuse a request the topology allows; the authorizer still
//     enforces each device's exact class budget.
func grantRate(g *grant) topology.Rate {
	if !g.rule.Rate.IsZero() {
		return g.rule.Rate
	}
	var best topology.Rate
	for _, r := range g.classes {
		if r.IsZero() {
			return topology.Rate{}
		}
		// Equal rates per second: the larger bucket (60/m over 1/s), as
		// coveringRate; the classes are a map, so a tie must not be left
		// to its order.
		if r.PerSecond() > best.PerSecond() || r.PerSecond() == best.PerSecond() && r.N > best.N {
			best = r
		}
	}
	return best
}

// gatewayRateLimit is the local rate limit configuration of a gateway's
// route configuration, or nil when no route is limited.
//
// Buckets are per downstream connection, and each device holds its own
// mTLS connection, so a device spends only its own budget. Envoy keeps one
// limiter per connection, built from the configuration of the first route
// the connection hits (envoyproxy/envoy#22163), so per-route buckets would
// all collapse into that route's. Instead the configuration is set once,
// on the route configuration (per-filter config resolves most specific
// first, and no route or virtual host sets its own), with one descriptor
// per route spec, and each limited route emits its spec's descriptor (a
// generic_key rate-limit action): whichever route builds the limiter, each
// spec spends its own bucket, and routes without a descriptor only spend
// the default bucket, which is too large to refuse anything. A descriptor
// holds rate.N tokens and gets rate.N back every rate.Per. The default
// bucket is never consumed by a request that matches a descriptor and is
// too large to refuse anything else.
func gatewayRateLimit(specs []*routeSpec) *anypb.Any {
	if len(specs) == 0 {
		return nil
	}
	all := &corev3.RuntimeFractionalPercent{
		DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED},
	}
	cfg := &ratelimitv3.LocalRateLimit{
		StatPrefix: rateLimitStatPrefix,
		TokenBucket: &typev3.TokenBucket{
			MaxTokens:     math.MaxUint32,
			TokensPerFill: wrapperspb.UInt32(math.MaxUint32),
			FillInterval:  durationpb.New(defaultFillInterval),
		},
		FilterEnabled:                         all,
		FilterEnforced:                        all,
		LocalRateLimitPerDownstreamConnection: true,
		AlwaysConsumeDefaultTokenBucket:       wrapperspb.Bool(false),
	}
	for _, s := range specs {
		cfg.Descriptors = append(cfg.Descriptors, &ratelimitcommonv3.LocalRateLimitDescriptor{
			Entries: []*ratelimitcommonv3.RateLimitDescriptor_Entry{{Key: rateLimitDescriptorKey, Value: s.key()}},
			TokenBucket: &typev3.TokenBucket{
				MaxTokens:     uint32(s.rate.N),
				TokensPerFill: wrapperspb.UInt32(uint32(s.rate.N)),
				FillInterval:  durationpb.New(s.rate.Per),
			},
		})
	}
	return mustAny(cfg)
}
