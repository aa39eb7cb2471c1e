package spiretpm

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/topology"
)

const fwGood = "1111111111111111111111111111111111111111111111111111111111111111"

// fakeVigil verifies as Vigil does (attest.Verify, keyed nonces, single
// use) for one enrolled gateway.
type fakeVigil struct {
	key      []byte
	ak       string
	subject  topology.Subject
	mu       sync.Mutex
	used     map[string]bool
	attested atomic.Int32
}

func (f *fakeVigil) Challenge(_ context.Context, req ChallengeRequest) (ChallengeResponse, error) {
	if req.Subject != f.subject {
		return ChallengeResponse{}, &Refusal{Reason: "no such subject"}
	}
	if req.AKPublic != f.ak {
		return ChallengeResponse{}, &Refusal{Reason: "the AK is not the one enrolled"}
	}
	n, exp, err := attest.NewNonce(f.key, req.Subject.String(), time.Now(), time.Minute)
	if err != nil {
		return ChallengeResponse{}, err
	}
	return ChallengeResponse{Nonce: hex.EncodeToString(n), Expires: exp, PCRs: []int{16}}, nil
}

func (f *fakeVigil) Attest(_ context.Context, req AttestRequest) (AttestResponse, error) {
	ev, err := attest.ParseEvidence(req.Evidence)
	if err != nil {
		return AttestResponse{}, &Refusal{Reason: err.Error()}
	}
	nonce, _ := hex.DecodeString(ev.Nonce)
	if _, err := attest.CheckNonce(f.key, req.Subject.String(), nonce, time.Now()); err != nil {
		return AttestResponse{}, &Refusal{Reason: err.Error()}
	}
	blk, _ := pem.Decode([]byte(f.ak))
	ak, _ := x509.ParsePKIXPublicKey(blk.Bytes)
	res := attest.Verify(req.Evidence, ev, attest.Enrolled{AK: ak}, attest.Policy{Class: "edge", Formats: []string{topology.AttestTPM2Quote}, PCRs: []int{16},
		Firmware: []topology.FirmwareRef{{Version: "5.0.0", SHA256: fwGood}}}, nonce, time.Now())
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.used[ev.Nonce] {
		return AttestResponse{}, &Refusal{Reason: "nonce already used: this evidence is a replay"}
	}
	f.used[ev.Nonce] = true
	if !res.Passed() {
		return AttestResponse{}, &Refusal{Reason: "attestation failed: " + strings.Join(res.Reasons, "; ")}
	}
	f.attested.Add(1)
	return AttestResponse{AgentID: "spiffe://city.example/spire/agent/vigil_tpm/gateway/" + req.Subject.Name,
		Selectors:   []string{"firmware:" + res.FirmwareVersion, "kind:gateway", "subject:" + req.Subject.Name},
		Attestation: &topology.Attestation{FirmwareVersion: res.FirmwareVersion}}, nil
}

func newWorld(t *testing.T, firmware string) (*Agent, *Server, *fakeVigil) {
	t.Helper()
	tpm, err := attest.NewSimTPM(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := tpm.MeasureFirmware(firmware); err != nil {
		t.Fatal(err)
	}
	ak, _ := tpm.AKPublicPEM()
	gw := topology.GatewaySubject("gw-1")
	f := &fakeVigil{key: []byte("0123456789abcdef0123456789abcdef"), ak: string(ak), subject: gw, used: map[string]bool{}}
	return &Agent{Subject: gw, TPM: tpm}, &Server{Vigil: f, TrustDomain: "city.example"}, f
}

func roundTrip(ctx context.Context, a *Agent, s *Server) (*Result, error) {
	p, err := a.Payload()
	if err != nil {
		return nil, err
	}
	att, ch, err := s.Begin(ctx, p)
	if err != nil {
		return nil, err
	}
	ans, err := a.Answer(ch)
	if err != nil {
		return nil, err
	}
	return att.Finish(ctx, ans)
}

func TestAttestationRoundTrip(t *testing.T) {
	ctx := context.Background()
	a, s, _ := newWorld(t, fwGood)
	res, err := roundTrip(ctx, a, s)
	if err != nil {
		t.Fatal(err)
	}
	if res.AgentID != "spiffe://city.example/spire/agent/vigil_tpm/gateway/gw-1" || res.Firmware != "5.0.0" ||
		strings.Join(res.Selectors, ",") != "firmware:5.0.0,kind:gateway,subject:gw-1" {
		t.Fatalf("result: %+v", res)
	}
}

func TestRefusals(t *testing.T) {
	ctx := context.Background()

	t.Run("unlisted firmware", func(t *testing.T) {
		a, s, _ := newWorld(t, strings.Repeat("2", 64))
		_, err := roundTrip(ctx, a, s)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "gateway/gw-1: attestation failed") {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("a quote over an earlier nonce", func(t *testing.T) {
		a, s, f := newWorld(t, fwGood)
		p, _ := a.Payload()
		_, ch1, err := s.Begin(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		old, _ := a.Answer(ch1)
		att2, _, err := s.Begin(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		_, err = att2.Finish(ctx, old)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "answers another nonce") {
			t.Fatalf("err = %v", err)
		}
		if f.attested.Load() != 0 {
			t.Fatal("Vigil was asked to verify a stale quote")
		}
	})

	t.Run("another TPM claiming the subject", func(t *testing.T) {
		a, s, _ := newWorld(t, fwGood)
		other, _ := attest.NewSimTPM(false)
		a.TPM = other
		_, err := roundTrip(ctx, a, s)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "not the one enrolled") {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("agent ID of another trust domain", func(t *testing.T) {
		a, s, _ := newWorld(t, fwGood)
		s.TrustDomain = "other.example"
		_, err := roundTrip(ctx, a, s)
		if err == nil || errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "trust domain") {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("bad payloads", func(t *testing.T) {
		_, s, _ := newWorld(t, fwGood)
		for _, p := range []string{``, `{}`, `{"v":2}`, `{"v":1,"subject":{"kind":"service","name":"x"},"akPublic":"k"}`,
			`{"v":1,"subject":{"kind":"gateway","name":"Bad Name"},"akPublic":"k"}`, `{"v":1,"subject":{"kind":"gateway","name":"gw-1"}}`,
			`{"v":1,"subject":{"kind":"gateway","name":"gw-1"},"akPublic":"k","extra":1}`, `{"v":1,"subject":{"kind":"gateway","name":"gw-1"},"akPublic":"k"} {}`,
			strings.Repeat(" ", MaxPayloadBytes+1)} {
			if _, _, err := s.Begin(ctx, []byte(p)); !errors.Is(err, ErrRefused) {
				t.Errorf("payload %.60q: err = %v, want a refusal", p, err)
			}
		}
	})

	t.Run("bad challenges", func(t *testing.T) {
		a, _, _ := newWorld(t, fwGood)
		for _, c := range []string{`{}`, `{"v":1,"nonce":"zz","pcrs":[16]}`, `{"v":1,"nonce":"` + strings.Repeat("ab", 32) + `","pcrs":[]}`,
			`{"v":1,"nonce":"` + strings.Repeat("ab", 32) + `","pcrs":[24]}`, `{"v":1,"nonce":"` + strings.Repeat("ab", 32) + `","pcrs":[16,7]}`} {
			if _, err := a.Answer([]byte(c)); err == nil {
				t.Errorf("challenge %s answered", c)
			}
		}
	})
}

func FuzzParsePayload(f *testing.F) {
	f.Add([]byte(`{"v":1,"subject":{"kind":"gateway","name":"gw-1"},"akPublic":"k","ekCert":"AAEC"}`))
	f.Add([]byte(`{"v":1,"nonce":"00","pcrs":[16]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := ParsePayload(b); err == nil && (p.AKPublic == "" || !topology.IsName(p.Subject.Name)) {
			t.Fatalf("accepted %+v", p)
		}
		if c, err := ParseChallenge(b); err == nil && len(c.PCRs) == 0 {
			t.Fatalf("accepted %+v", c)
		}
	})
}

func TestClient(t *testing.T) {
	ctx := context.Background()
	var calls atomic.Int32
	h := func(status int, code, msg string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			if r.Header.Get("Authorization") != "Bearer tok-0123456789abcdef" {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			w.WriteHeader(status)
			if status == http.StatusOK {
				json.NewEncoder(w).Encode(ChallengeResponse{Nonce: "ab", PCRs: []int{16}})
				return
			}
			json.NewEncoder(w).Encode(map[string]string{"code": code, "message": msg})
		}
	}
	ok := httptest.NewServer(h(http.StatusOK, "", ""))
	defer ok.Close()
	busy := httptest.NewServer(h(http.StatusServiceUnavailable, "no_leader", "no leader is known"))
	defer busy.Close()
	refuse := httptest.NewServer(h(http.StatusForbidden, CodeRefused, "gateway gw-1 is quarantined: tamper"))
	defer refuse.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()

	c, err := NewClient([]string{down.URL, busy.URL, ok.URL}, "tok-0123456789abcdef", nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	calls.Store(0)
	if r, err := c.Challenge(ctx, ChallengeRequest{Subject: topology.GatewaySubject("gw-1")}); err != nil || r.Nonce != "ab" || calls.Load() != 2 {
		t.Fatalf("failover past a closed and a busy member: %+v, %v, %d calls", r, err, calls.Load())
	}

	c, _ = NewClient([]string{refuse.URL, ok.URL}, "tok-0123456789abcdef", nil, time.Second)
	calls.Store(0)
	_, err = c.Attest(ctx, AttestRequest{Subject: topology.GatewaySubject("gw-1")})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "quarantined") || calls.Load() != 1 {
		t.Fatalf("a refusal must end the call, never go to another member: %v, %d calls", err, calls.Load())
	}

	c, _ = NewClient([]string{ok.URL}, "wrong-token-0123456789", nil, time.Second)
	if _, err := c.Attest(ctx, AttestRequest{Subject: topology.GatewaySubject("gw-1")}); err == nil || errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "token") || strings.Contains(err.Error(), "wrong-token") {
		t.Fatalf("a bad token: %v", err)
	}

	for _, bad := range [][]string{nil, {"http://vigil.example:7070"}, {"ftp://127.0.0.1"}, {"https://h:1/path"}} {
		if _, err := NewClient(bad, "t", nil, 0); err == nil {
			t.Errorf("NewClient(%q) accepted", bad)
		}
	}
	if c, err := NewClient([]string{"vigil.example:7070", "http://127.0.0.1:7070"}, "t", nil, 0); err != nil || c.servers[0] != "https://vigil.example:7070" {
		t.Fatalf("defaults: %v", err)
	}
}

func TestLimits(t *testing.T) {
	if MaxAttestRequestBytes != attest.MaxEvidenceBytes+4<<10 {
		t.Fatalf("MaxAttestRequestBytes = %d: it must follow attest.MaxEvidenceBytes (%d) and 4 KiB of envelope", MaxAttestRequestBytes, attest.MaxEvidenceBytes)
	}
}
