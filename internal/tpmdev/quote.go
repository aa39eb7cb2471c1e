package tpmdev

import (
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/vigil-iot/vigil/attest"
)

// Quoted is a quote and the PCR values read after it.
type Quoted struct {
	Quote     []byte    // a marshalled TPMS_ATTEST
	Signature []byte    // a marshalled TPMT_SIGNATURE
	Values    PCRValues // the sha256 PCRs quoted, read after the quote
}

// Quote quotes the sha256 PCRs over nonce with the AK and reads them.
func Quote(t transport.TPM, ak *AK, nonce []byte, pcrs []int) (*Quoted, error) {
	sel := make([]uint, len(pcrs))
	for i, p := range pcrs {
		sel[i] = uint(p)
	}
	selection := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(sel...)}}}
	rsp, err := tpm2.Quote{
		SignHandle:     tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: nonce},
		InScheme:       ak.scheme,
		PCRSelect:      selection,
	}.Execute(t)
	if err != nil {
		return nil, tpmErr(fmt.Sprintf("quoting PCRs %v with the key at 0x%08x", pcrs, uint32(ak.handle)), err)
	}
	q := &Quoted{Quote: rsp.Quoted.Bytes(), Signature: tpm2.Marshal(rsp.Signature), Values: PCRValues{}}
	// PCR_Read returns at most 8 PCRs at a time: read until all are.
	pending := slices.Clone(pcrs)
	for len(pending) > 0 {
		sel := make([]uint, len(pending))
		for i, p := range pending {
			sel[i] = uint(p)
		}
		r, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(sel...)}}}}.Execute(t)
		if err != nil {
			return nil, tpmErr(fmt.Sprintf("reading PCRs %v", pending), err)
		}
		var got []int
		for _, s := range r.PCRSelectionOut.PCRSelections {
			for i := 0; i < len(s.PCRSelect)*8; i++ {
				if s.Hash == tpm2.TPMAlgSHA256 && s.PCRSelect[i/8]&(1<<(i%8)) != 0 {
					got = append(got, i)
				}
			}
		}
		if len(got) == 0 || len(got) != len(r.PCRValues.Digests) {
			return nil, fmt.Errorf("reading PCRs %v: the TPM returned %d values for PCRs %v (has it a sha256 bank with these PCRs?)", pending, len(r.PCRValues.Digests), got)
		}
		for k, i := range got {
			q.Values.Set("sha256", i, r.PCRValues.Digests[k].Buffer)
		}
		pending = slices.DeleteFunc(pending, func(p int) bool { return slices.Contains(got, p) })
	}
	return q, nil
}

// QuoteEvidence quotes the sha256 PCRs pcrs over nonce with the AK, reads
// them and builds the evidence with the event log (nil for none), as
// `vigil attest tpm quote` does. When a PCR was extended between the quote
// and the read it quotes again, a few times at most. The warnings are
// BuildEvidence's.
func QuoteEvidence(t transport.TPM, ak *AK, nonce []byte, pcrs []int, log *EventLogFile) (*attest.Evidence, []string, error) {
	for attempt := 1; ; attempt++ {
		q, err := Quote(t, ak, nonce, pcrs)
		if err != nil {
			return nil, nil, err
		}
		ev, warnings, err := BuildEvidence(q.Quote, q.Signature, nonce, q.Values, log)
		if err == nil {
			return ev, warnings, nil
		}
		if !errors.Is(err, ErrPCRDigest) || attempt == quoteAttempts {
			return nil, nil, fmt.Errorf("the TPM's own quote does not check out: %w", err)
		}
		// a PCR was extended between the quote and the read: again
	}
}
