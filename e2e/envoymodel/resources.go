package envoymodel

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"gopkg.in/yaml.v3"

	// The typed configs a Vigil node is sent, registered for protojson.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// Resources is everything one node receives: what `vigil xds dump` prints.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	// Unknown lists the type URLs of typed configs this package has no Go
	// type for. They are kept as xds.type.v3.TypedStruct (type URL and
	// fields); a model step that needs one of them fails.
	Unknown []string
}

// ParseDump reads the output of `vigil xds dump`: four YAML documents, each
// a list of resources in protojson form, headed "# listeners", "# routes",
// "# clusters" and "# endpoints" (in that order when a heading is missing).
func ParseDump(data []byte) (*Resources, error) {
	res := &Resources{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	order := []string{"listeners", "routes", "clusters", "endpoints"}
	for i := 0; ; i++ {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dump document %d: %w", i+1, err)
		}
		kind := docKind(&doc)
		if kind == "" && i < len(order) {
			kind = order[i]
		}
		var items []any
		if err := doc.Decode(&items); err != nil {
			return nil, fmt.Errorf("dump document %d (%s): want a list: %w", i+1, kind, err)
		}
		for j, item := range items {
			if err := res.add(kind, item); err != nil {
				return nil, fmt.Errorf("%s[%d]: %w", kind, j, err)
			}
		}
	}
	return res, nil
}

// docKind reads the "# listeners" style heading of a dump document.
func docKind(doc *yaml.Node) string {
	comments := doc.HeadComment
	if len(doc.Content) > 0 {
		comments += "\n" + doc.Content[0].HeadComment
	}
	for _, line := range strings.Split(comments, "\n") {
		if w := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "#")); w != "" {
			return w
		}
	}
	return ""
}

func (res *Resources) add(kind string, item any) error {
	var m proto.Message
	switch kind {
	case "listeners":
		l := &listenerv3.Listener{}
		m, res.Listeners = l, append(res.Listeners, l)
	case "routes":
		r := &routev3.RouteConfiguration{}
		m, res.Routes = r, append(res.Routes, r)
	case "clusters":
		c := &clusterv3.Cluster{}
		m, res.Clusters = c, append(res.Clusters, c)
	case "endpoints":
		e := &endpointv3.ClusterLoadAssignment{}
		m, res.Endpoints = e, append(res.Endpoints, e)
	default:
		return fmt.Errorf("unknown resource list %q", kind)
	}
	item = res.wrapUnknown(item)
	js, err := json.Marshal(item)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(js, m)
}

// wrapUnknown replaces, in a decoded JSON tree, every typed config whose
// type is not registered by a TypedStruct that keeps its type URL and
// fields, so that the rest still decodes.
func (res *Resources) wrapUnknown(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = res.wrapUnknown(e)
		}
		url, ok := x["@type"].(string)
		if !ok {
			return x
		}
		if _, err := protoregistry.GlobalTypes.FindMessageByURL(url); err == nil {
			return x
		}
		if !slices.Contains(res.Unknown, url) {
			res.Unknown = append(res.Unknown, url)
		}
		fields := map[string]any{}
		for k, e := range x {
			if k != "@type" {
				fields[k] = e
			}
		}
		return map[string]any{"@type": "type.googleapis.com/" + string(typedStructName), "typeUrl": url, "value": fields}
	case []any:
		for i, e := range x {
			x[i] = res.wrapUnknown(e)
		}
	}
	return v
}

var typedStructName protoreflect.FullName = (&xdstypev3.TypedStruct{}).ProtoReflect().Descriptor().FullName()

// Listener returns the listener bound to port (on any address), or nil.
func (res *Resources) Listener(port uint32) *listenerv3.Listener {
	for _, l := range res.Listeners {
		if sa := l.GetAddress().GetSocketAddress(); sa != nil && sa.GetPortValue() == port {
			return l
		}
	}
	return nil
}

// ListenerPorts lists the ports of the listeners, in order.
func (res *Resources) ListenerPorts() []uint32 {
	var out []uint32
	for _, l := range res.Listeners {
		if sa := l.GetAddress().GetSocketAddress(); sa != nil {
			out = append(out, sa.GetPortValue())
		}
	}
	return out
}

// RouteConfig returns the route configuration named name, or nil.
func (res *Resources) RouteConfig(name string) *routev3.RouteConfiguration {
	for _, r := range res.Routes {
		if r.GetName() == name {
			return r
		}
	}
	return nil
}

// Cluster returns the cluster named name, or nil.
func (res *Resources) Cluster(name string) *clusterv3.Cluster {
	for _, c := range res.Clusters {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

// Addresses are the endpoints of cluster c as host:port: its inline
// load_assignment, or, for EDS, the ClusterLoadAssignment of its service
// name (the cluster's name when none is set).
func (res *Resources) Addresses(c *clusterv3.Cluster) []string {
	cla := c.GetLoadAssignment()
	if c.GetType() == clusterv3.Cluster_EDS {
		name := c.GetEdsClusterConfig().GetServiceName()
		if name == "" {
			name = c.GetName()
		}
		cla = nil
		for _, e := range res.Endpoints {
			if e.GetClusterName() == name {
				cla = e
			}
		}
	}
	var out []string
	for _, locality := range cla.GetEndpoints() {
		for _, lb := range locality.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				continue
			}
			host := sa.GetAddress()
			if a, err := netip.ParseAddr(host); err == nil {
				out = append(out, netip.AddrPortFrom(a, uint16(sa.GetPortValue())).String())
			} else {
				out = append(out, fmt.Sprintf("%s:%d", host, sa.GetPortValue()))
			}
		}
	}
	return out
}
