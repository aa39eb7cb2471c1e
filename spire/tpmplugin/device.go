package tpmplugin

import (
	"errors"

	"github.com/vigil-iot/vigil/internal/spiretpm"
)

// DefaultAKHandle is where `vigil attest tpm ak-public` keeps the AK.
const DefaultAKHandle = "0x81010002"

// OpenDevice is the TPM an agent configuration names.
func OpenDevice(cfg AgentConfig) (spiretpm.TPM, error) {
	return nil, errors.New("internal/tpmdev is not wired yet")
}
