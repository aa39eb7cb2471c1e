package tpmplugin

import (
	"github.com/vigil-iot/vigil/internal/spiretpm"
	"github.com/vigil-iot/vigil/internal/tpmdev"
)

// DefaultAKHandle is where `vigil attest tpm ak-public` keeps the AK.
const DefaultAKHandle = tpmdev.DefaultAKHandle

// OpenDevice is the TPM an agent configuration names: it is opened afresh
// for every attestation (swtpm and /dev/tpm0 have no resource manager).
func OpenDevice(cfg AgentConfig) (spiretpm.TPM, error) {
	h, err := tpmdev.ParseAKHandle(cfg.AKHandle)
	if err != nil {
		return nil, err
	}
	return &tpmdev.Device{Spec: cfg.TPM, AKHandle: h, EventLog: cfg.EventLog}, nil
}
