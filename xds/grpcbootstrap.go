package xds

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"
)

// GRPCCerts are the files grpc-go's file_watcher certificate provider
// reads: the workload's certificate chain and key, and the CA bundle of
// the trust domain. A SPIRE agent keeps them fresh through spiffe-helper.
type GRPCCerts struct {
	CertFile, KeyFile, CAFile string
	// Refresh is how often grpc-go rereads the files (default 10 minutes,
	// grpc-go's own default).
	Refresh time.Duration
	// XDSTLS makes the program reach Vigil over mutual TLS with the same
	// files (grpc-go's "tls" channel credentials). grpc-go checks the
	// member's certificate against the host it dials, so the member's
	// certificate needs that DNS name or IP address as a SAN.
	XDSTLS bool
}

// GRPCBootstrap is the bootstrap (GRPC_XDS_BOOTSTRAP) of a proxyless gRPC
// client or server running as node: the Vigil members to ask over xDS,
// the node, the certificate provider the translated TLS contexts name,
// and the server listener template. Resource deletion is not ignored: a
// listener Vigil withdraws makes the client's RPCs fail.
func GRPCBootstrap(node Node, xdsAddrs []string, certs GRPCCerts) ([]byte, error) {
	if node.ID == "" || node.Cluster == "" {
		return nil, fmt.Errorf("grpc bootstrap: a node id and cluster (zone) are required")
	}
	if len(xdsAddrs) == 0 {
		return nil, fmt.Errorf("grpc bootstrap: at least one Vigil xDS address is required")
	}
	type creds struct {
		Type   string            `json:"type"`
		Config map[string]string `json:"config,omitempty"`
	}
	type server struct {
		URI      string   `json:"server_uri"`
		Creds    []creds  `json:"channel_creds"`
		Features []string `json:"server_features"`
	}
	refresh := certs.Refresh
	if refresh <= 0 {
		refresh = 10 * time.Minute
	}
	files := map[string]string{
		"certificate_file":    certs.CertFile,
		"private_key_file":    certs.KeyFile,
		"ca_certificate_file": certs.CAFile,
		"refresh_interval":    strconv.FormatFloat(refresh.Seconds(), 'f', -1, 64) + "s",
	}
	channel := creds{Type: "insecure"}
	if certs.XDSTLS {
		channel = creds{Type: "tls", Config: files}
	}
	var servers []server
	for _, a := range xdsAddrs {
		if h, p, err := net.SplitHostPort(a); err != nil || h == "" || p == "" {
			return nil, fmt.Errorf("grpc bootstrap: xDS address %q must be host:port", a)
		}
		servers = append(servers, server{URI: a, Creds: []creds{channel}, Features: []string{"xds_v3"}})
	}
	for name, f := range map[string]string{"certificate": certs.CertFile, "key": certs.KeyFile, "CA": certs.CAFile} {
		if f == "" || !filepath.IsAbs(f) {
			return nil, fmt.Errorf("grpc bootstrap: the %s file must be an absolute path, got %q", name, f)
		}
	}
	b := map[string]any{
		"xds_servers": servers,
		"node":        map[string]any{"id": node.ID, "cluster": node.Cluster},
		"certificate_providers": map[string]any{GRPCCertProvider: map[string]any{
			"plugin_name": "file_watcher",
			"config":      files,
		}},
		"server_listener_resource_name_template": GRPCServerListenerTemplate,
	}
	return json.MarshalIndent(b, "", "  ")
}
