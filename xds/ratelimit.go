package xds

import (
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
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
	// minFillInterval is the smallest fill interval Envoy accepts.
	minFillInterval = 50 * time.Millisecond
)

// localRateLimitFilter is present with no default bucket: only routes that
// carry a bucket (routeRateLimit) are limited.
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
		if r.PerSecond() > best.PerSecond() {
			best = r
		}
	}
	return best
}

// routeRateLimit is the per-route bucket for rate, or nil for no limit. The
// bucket is per downstream connection, and each device holds its own mTLS
// connection, so one device cannot spend its neighbours' budget. Like the
// authorizer's, it holds rate.N tokens and refills rate.N per rate.Per,
// one token at a time when Envoy's 50ms minimum interval allows.
func routeRateLimit(rate topology.Rate) *anypb.Any {
	if rate.IsZero() {
		return nil
	}
	perFill, interval := uint32(1), rate.Per/time.Duration(rate.N)
	if interval < minFillInterval {
		perFill, interval = uint32(rate.N), rate.Per
	}
	all := &corev3.RuntimeFractionalPercent{
		DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED},
	}
	return mustAny(&ratelimitv3.LocalRateLimit{
		StatPrefix: rateLimitStatPrefix,
		TokenBucket: &typev3.TokenBucket{
			MaxTokens:     uint32(rate.N),
			TokensPerFill: wrapperspb.UInt32(perFill),
			FillInterval:  durationpb.New(interval),
		},
		FilterEnabled:                         all,
		FilterEnforced:                        all,
		LocalRateLimitPerDownstreamConnection: true,
	})
}
