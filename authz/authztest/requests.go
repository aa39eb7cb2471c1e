// Package authztest builds CheckRequests against generated topologies for
// the authorizer's benchmarks and load tools. It imports topology and
// topologytest only.
package authztest

import (
	"strconv"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// Requests returns n requests from devices spread evenly over a generated
// topology of the given size: even ones are allowed by a flow (telemetry,
// or a camera's upload), odd ones (DELETE) by none.
func Requests(ix *topology.Index, n, devices int) []*authv3.CheckRequest {
	reqs := make([]*authv3.CheckRequest, n)
	for i := range reqs {
		name := topologytest.DeviceName(i * (devices / n))
		id, _ := ix.SPIFFEID(topology.DeviceSubject(name))
		d, _ := ix.Device(name)
		method, path, host := "POST", "/api/v1/telemetry", "telemetry.city.example"
		switch {
		case i%2 == 1:
			method = "DELETE"
		case d.Class == "traffic-camera":
			path, host = "/upload/cam.jpg", "video.city.example"
		}
		reqs[i] = &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: id},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Id: strconv.Itoa(i), Method: method, Path: path, Host: host, Scheme: "https", Protocol: "HTTP/1.1",
				Headers: map[string]string{":authority": host, ":method": method, ":path": path,
					"content-type": "application/json", "user-agent": "slc-firmware/2.4.1"},
			}},
		}}
	}
	return reqs
}
