package fleetsim

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/topology"
)

// Attestable reports whether the simulator can attest devices of class c:
// the class requires attestation, accepts TPM 2.0 quotes and lists
// reference firmware.
func Attestable(c *topology.Class) bool {
	return c != nil && c.MaxAge > 0 && len(c.Attestation.Firmware) > 0 &&
		slices.Contains(c.Attestation.Formats, topology.AttestTPM2Quote)
}

// AttestDevice gives a device of class c a fresh simulated TPM and attests
// it through the member's API as the device and its gateway would:
// enroll the TPM's AK (replacing any key enrolled before), measure the
// firmware (firmware, a SHA-256 in hex; "" for the class's last reference
// value), challenge, quote the class's PCRs over the nonce, submit. It
// returns the member's verdict and the evidence as submitted (which a
// second submission replays).
func AttestDevice(ctx context.Context, cl *api.Client, c *topology.Class, device, firmware string) (api.AttestResponse, []byte, error) {
	if !Attestable(c) {
		return api.AttestResponse{}, nil, fmt.Errorf("class %s: the simulator attests only classes that require attestation, accept tpm2-quote and list firmware", c.Name)
	}
	tpm, err := attest.NewSimTPM(false)
	if err != nil {
		return api.AttestResponse{}, nil, err
	}
	ak, err := tpm.AKPublicPEM()
	if err != nil {
		return api.AttestResponse{}, nil, err
	}
	if _, err := cl.Enroll(ctx, device, api.EnrollRequest{TPMAK: string(ak)}); err != nil {
		return api.AttestResponse{}, nil, fmt.Errorf("enroll %s: %w", device, err)
	}
	if firmware == "" {
		firmware = c.Attestation.Firmware[len(c.Attestation.Firmware)-1].SHA256
	}
	if err := tpm.MeasureFirmware(firmware); err != nil {
		return api.AttestResponse{}, nil, err
	}
	ch, err := cl.Challenge(ctx, device)
	if err != nil {
		return api.AttestResponse{}, nil, fmt.Errorf("challenge %s: %w", device, err)
	}
	nonce, err := hex.DecodeString(ch.Nonce)
	if err != nil {
		return api.AttestResponse{}, nil, fmt.Errorf("challenge %s: nonce: %w", device, err)
	}
	ev, err := tpm.Evidence(nonce, c.Attestation.PCRs)
	if err != nil {
		return api.AttestResponse{}, nil, err
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return api.AttestResponse{}, nil, err
	}
	resp, err := cl.Attest(ctx, device, raw)
	if err != nil {
		return api.AttestResponse{}, raw, fmt.Errorf("attest %s: %w", device, err)
	}
	if resp.Attestation == nil {
		return resp, raw, fmt.Errorf("attest %s: the member recorded no attestation", device)
	}
	return resp, raw, nil
}

// validAttestation reports whether st holds a passing attestation that
// lasts at least another hour.
func validAttestation(st *topology.SubjectState, now time.Time) bool {
	return st != nil && st.Attestation != nil && !st.Attestation.Failed() && st.Attestation.ExpiresAt.After(now.Add(time.Hour))
}

// AttestationReport says what the simulator's attestation did.
type AttestationReport struct {
	// Attested devices passed with the simulator's evidence; Valid held a
	// passing attestation already; Failed lists "device: reason" for the
	// others; Unsupported devices belong to classes the simulator cannot
	// attest (see Attestable).
	Attested    int      `json:"attested"`
	Valid       int      `json:"valid"`
	Failed      []string `json:"failed"`
	Unsupported int      `json:"unsupported"`
}

// attestFleet attests the fleet's devices that need it, eight at a time.
func (s *Sim) attestFleet(ctx context.Context) *AttestationReport {
	rep := &AttestationReport{Failed: []string{}}
	var mu sync.Mutex
	work := make(chan *Device)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range work {
				c, _ := s.ix.Class(d.Class)
				res, err := s.attestOne(ctx, d, c)
				mu.Lock()
				switch {
				case err != nil:
					rep.Failed = append(rep.Failed, d.Name+": "+err.Error())
				case res == "valid":
					rep.Valid++
				case res == "attested":
					rep.Attested++
				}
				mu.Unlock()
			}
		}()
	}
	for _, d := range s.fleet {
		c, _ := s.ix.Class(d.Class)
		if c == nil || c.MaxAge == 0 {
			continue
		}
		if !Attestable(c) {
			rep.Unsupported++
			continue
		}
		select {
		case work <- d:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	slices.Sort(rep.Failed)
	return rep
}

func (s *Sim) attestOne(ctx context.Context, d *Device, c *topology.Class) (string, error) {
	sub, err := s.api.Subject(ctx, topology.KindDevice, d.Name)
	if err != nil {
		return "", err
	}
	if validAttestation(sub.State, time.Now()) {
		return "valid", nil
	}
	if sub.Quarantined {
		return "", fmt.Errorf("quarantined")
	}
	resp, _, err := AttestDevice(ctx, s.api, c, d.Name, "")
	if err != nil {
		return "", err
	}
	if resp.Attestation.Failed() {
		return "", fmt.Errorf("failed: %s", strings.Join(resp.Attestation.Reasons, "; "))
	}
	return "attested", nil
}
