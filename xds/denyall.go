package xds

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
)

// DenyAllRouteName is the (inline) route configuration of the deny-all
// listener.
const DenyAllRouteName = "vigil-deny-all"

// DenyAll is the configuration of a node Vigil does not know: one listener
// on the device-facing port, named like the gateway listener so that a
// gateway removed from the topology has its listener replaced in place,
// answering 403 to every request. It has no routes of its own (the route
// configuration is inline), no clusters and no endpoints, so it names
// nothing of any zone.
func DenyAll(opts Options) (*Resources, error) {
	opts = opts.withDefaults()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("xds options: %w", err)
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "vigil_deny_all",
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: DenyAllRouteName,
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    "deny-all",
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Name:  "deny-all",
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
						Status: 403,
						Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "denied: unknown proxy node\n"}},
					}},
				}},
			}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			routerFilter(),
		},
	}
	l := gatewayHTTPListener(opts.ListenerPort, hcm, nil)
	if err := validateDeep(l); err != nil {
		return nil, fmt.Errorf("deny-all listener: %w", err)
	}
	return &Resources{Listeners: []types.Resource{l}}, nil
}
