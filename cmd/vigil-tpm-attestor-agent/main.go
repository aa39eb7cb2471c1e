// Command vigil-tpm-attestor-agent is the agent side of the vigil_tpm SPIRE
// node attestor: spire-agent loads it (NodeAttestor "vigil_tpm" {
// plugin_cmd = ... }) and it answers the server's challenge with a quote
// of the TPM's PCRs and the firmware event log. See docs/spire-tpm.md. It
// is not meant to be run by hand.
package main

import (
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	nodeattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/agent/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"

	"github.com/vigil-iot/vigil/spire/tpmplugin"
)

func main() {
	p := new(tpmplugin.AgentPlugin)
	pluginmain.Serve(nodeattestorv1.NodeAttestorPluginServer(p), configv1.ConfigServiceServer(p))
}
