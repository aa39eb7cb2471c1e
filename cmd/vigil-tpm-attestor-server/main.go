// Command vigil-tpm-attestor-server is the server side of the vigil_tpm SPIRE
// node attestor: spire-server loads it (NodeAttestor "vigil_tpm" {
// plugin_cmd = ... }) and it has Vigil verify each agent's TPM quote over a
// single-use nonce, giving agents selectors that carry their measured
// firmware. See docs/spire-tpm.md. It is not meant to be run by hand.
package main

import (
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	nodeattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"

	"github.com/vigil-iot/vigil/spire/tpmplugin"
)

func main() {
	p := new(tpmplugin.ServerPlugin)
	pluginmain.Serve(nodeattestorv1.NodeAttestorPluginServer(p), configv1.ConfigServiceServer(p))
}
