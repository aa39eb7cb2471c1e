// Package xds turns a topology snapshot into the Envoy configuration each
// proxy node receives (a pure translator: snapshot × node → resources).
//
// It owns the mapping from Vigil's zones, gateways, devices, services and
// flows to Envoy listeners, routes, clusters and endpoints, one file per
// feature, the Envoy bootstrap, and the xDS server (server.go) that serves
// each node its resources over ADS and tracks what it ACKed. It imports
// only topology (and, from outside the module, go-control-plane, grpc and
// protobuf); it must not import raft, authz, api or any other package of
// this module: the node feeds it snapshots.
package xds
