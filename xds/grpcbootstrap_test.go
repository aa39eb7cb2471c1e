package xds

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestGRPCBootstrap(t *testing.T) {
	certs := GRPCCerts{CertFile: "/c/svid.pem", KeyFile: "/c/svid.key", CAFile: "/c/bundle.pem"}
	data, err := GRPCBootstrap(Node{ID: "firmware", Cluster: "cloud"}, []string{"10.0.0.1:18000", "vigil-2.example:18000"}, certs)
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		XDSServers []struct {
			ServerURI    string `json:"server_uri"`
			ChannelCreds []struct {
				Type   string            `json:"type"`
				Config map[string]string `json:"config"`
			} `json:"channel_creds"`
			ServerFeatures []string `json:"server_features"`
		} `json:"xds_servers"`
		Node                 struct{ ID, Cluster string } `json:"node"`
		CertificateProviders map[string]struct {
			PluginName string            `json:"plugin_name"`
			Config     map[string]string `json:"config"`
		} `json:"certificate_providers"`
		Template string `json:"server_listener_resource_name_template"`
	}
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	if len(b.XDSServers) != 2 || b.XDSServers[1].ServerURI != "vigil-2.example:18000" || b.XDSServers[0].ChannelCreds[0].Type != "insecure" {
		t.Errorf("xds_servers = %+v", b.XDSServers)
	}
	for _, s := range b.XDSServers {
		for _, f := range s.ServerFeatures {
			if f == "ignore_resource_deletion" {
				t.Error("resource deletion must not be ignored: a withdrawn listener has to fail the calls")
			}
		}
	}
	if b.Node.ID != "firmware" || b.Node.Cluster != "cloud" {
		t.Errorf("node = %+v", b.Node)
	}
	p := b.CertificateProviders[GRPCCertProvider]
	if p.PluginName != "file_watcher" || p.Config["certificate_file"] != certs.CertFile || p.Config["private_key_file"] != certs.KeyFile ||
		p.Config["ca_certificate_file"] != certs.CAFile || p.Config["refresh_interval"] != "600s" {
		t.Errorf("certificate provider = %+v", p)
	}
	if b.Template != GRPCServerListenerTemplate || GRPCServerListenerName("[::]:1") != strings.Replace(GRPCServerListenerTemplate, "%s", "[::]:1", 1) {
		t.Errorf("server listener template %q", b.Template)
	}

	for name, tc := range map[string]struct {
		node  Node
		addrs []string
		certs GRPCCerts
		want  string
	}{
		"no cluster":    {Node{ID: "x"}, []string{"a:1"}, certs, "cluster"},
		"no server":     {Node{ID: "x", Cluster: "z"}, nil, certs, "at least one"},
		"bad server":    {Node{ID: "x", Cluster: "z"}, []string{"nohost"}, certs, "host:port"},
		"relative cert": {Node{ID: "x", Cluster: "z"}, []string{"a:1"}, GRPCCerts{CertFile: "svid.pem", KeyFile: "/k", CAFile: "/c"}, "absolute"},
		"no CA":         {Node{ID: "x", Cluster: "z"}, []string{"a:1"}, GRPCCerts{CertFile: "/s", KeyFile: "/k"}, "CA file"},
	} {
		if _, err := GRPCBootstrap(tc.node, tc.addrs, tc.certs); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error saying %q", name, err, tc.want)
		}
	}
}

// TestGRPCBootstrapOverMutualTLS: XDSTLS gives every xDS server grpc-go's
// "tls" channel credentials with the node's own files.
func TestGRPCBootstrapOverMutualTLS(t *testing.T) {
	certs := GRPCCerts{CertFile: "/c/svid.pem", KeyFile: "/c/svid.key", CAFile: "/c/bundle.pem", XDSTLS: true}
	data, err := GRPCBootstrap(Node{ID: "firmware", Cluster: "cloud"}, []string{"10.0.0.1:18000"}, certs)
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		XDSServers []struct {
			ChannelCreds []struct {
				Type   string            `json:"type"`
				Config map[string]string `json:"config"`
			} `json:"channel_creds"`
		} `json:"xds_servers"`
	}
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	c := b.XDSServers[0].ChannelCreds
	if len(c) != 1 || c[0].Type != "tls" || c[0].Config["certificate_file"] != certs.CertFile ||
		c[0].Config["private_key_file"] != certs.KeyFile || c[0].Config["ca_certificate_file"] != certs.CAFile {
		t.Errorf("channel_creds = %+v", c)
	}
}
