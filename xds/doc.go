// Package xds turns a topology snapshot into the Envoy configuration each
// proxy node receives (a pure translator: snapshot × node → resources).
//
// It owns the mapping from Vigil's zones, gateways, devices, services and
// flows to Envoy listeners, routes, clusters and endpoints, one file per
// feature. It imports only topology (and, from outside the module,
// go-control-plane and protobuf); it must not import raft, authz, api or any
// other package of this module. The xDS server that serves these resources
// will sit beside the translator and keep the same rule.
package xds
