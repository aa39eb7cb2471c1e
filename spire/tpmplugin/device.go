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
	return &device{Device: &tpmdev.Device{Spec: cfg.TPM, AKHandle: h, EventLog: cfg.EventLog}}, nil
}

// device is a TPM that can be given an AK.
type device struct{ *tpmdev.Device }

// akMaker is a TPM on which the agent plugin creates the AK when its
// handle is empty.
type akMaker interface {
	ensureAK() (created bool, err error)
}

// ensureAK creates the AK at the configured handle if there is none, as
// `vigil attest tpm ak-public` does (which prints it for enrollment).
func (d *device) ensureAK() (bool, error) {
	t, err := tpmdev.Open(d.Spec)
	if err != nil {
		return false, err
	}
	defer t.Close()
	_, created, err := tpmdev.EnsureAK(t, d.AKHandle)
	return created, err
}
