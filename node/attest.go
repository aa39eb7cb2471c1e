package node

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

// attestor is the member's attestation service: it issues nonces, verifies
// evidence with attest/ and records the result (and the nonce's use)
// through Raft, and records enrolled keys.
type attestor struct {
	store   *raft.Store
	batches chan *pendingResult
	// leader is a client of the member at addr with the peer token.
	leader  func(addr string) *api.Client
	key     []byte // nonce MAC key, the same on every member
	member  string
	monitor *monitorPart // nil: no monitor
	metrics *attestMetrics
	ttl     time.Duration
	now     func() time.Time
	log     *slog.Logger
	// warns bounds the warnings a stranger can cause: vigil_tpm refusals,
	// which whoever reaches SPIRE's agent port can cause at will.
	warns api.WarnLimiter
}

var _ api.Attestor = (*attestor)(nil)

func newAttestor(n *Node) *attestor {
	m := hmac.New(sha256.New, []byte(n.peer))
	m.Write([]byte("vigil attestation nonce key v1"))
	return &attestor{store: n.store, key: m.Sum(nil), member: n.cfg.ID, ttl: attest.DefaultNonceTTL, now: n.cfg.Clock, log: n.cfg.Logger,
		batches: make(chan *pendingResult, 4096), metrics: newAttestMetrics(),
		leader: func(addr string) *api.Client { return n.conn.Client(addr, n.peer) }}
}

// Results are batched into the log: a re-attestation storm (a city's
// devices within minutes) would otherwise cost one Raft entry each and
// starve other writes. The batcher collects what arrives within
// batchWindow, up to maxBatch operations, into one entry. An entry is
// applied all or nothing, so when the log refuses a batch (a nonce used
// twice, in the batch or before it) each result is proposed on its own,
// for its own answer.
const (
	batchWindow = 2 * time.Millisecond
	maxBatch    = 512
)

type pendingResult struct {
	ops  []raft.StateOp
	done chan batchAnswer
}

type batchAnswer struct {
	rev topology.Revision
	err error
}

// record proposes ops through the batcher, or directly when it is not
// running.
func (a *attestor) record(ctx context.Context, ops []raft.StateOp) (topology.Revision, error) {
	p := &pendingResult{ops: ops, done: make(chan batchAnswer, 1)}
	select {
	case a.batches <- p:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	select {
	case ans := <-p.done:
		return ans.rev, ans.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// run proposes batched results until ctx ends.
func (a *attestor) run(ctx context.Context) error {
	for {
		var batch []*pendingResult
		select {
		case <-ctx.Done():
			return nil
		case p := <-a.batches:
			batch = append(batch, p)
		}
		n := len(batch[0].ops)
		timer := time.NewTimer(batchWindow)
	collect:
		for n < maxBatch {
			select {
			case p := <-a.batches:
				batch = append(batch, p)
				n += len(p.ops)
			case <-timer.C:
				break collect
			}
		}
		timer.Stop()
		a.propose(ctx, batch)
	}
}

func (a *attestor) propose(ctx context.Context, batch []*pendingResult) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ops := make([][]raft.StateOp, len(batch))
	for i, p := range batch {
		ops[i] = p.ops
	}
	var answers []batchAnswer
	if a.store.IsLeader() {
		answers = a.applyBatch(ctx, ops)
	} else {
		answers = a.forward(ctx, ops)
	}
	for i, p := range batch {
		p.done <- answers[i]
	}
}

// applyBatch proposes the results as one entry; when the log refuses it (a
// nonce used twice), each on its own, for its own answer.
func (a *attestor) applyBatch(ctx context.Context, batch [][]raft.StateOp) []batchAnswer {
	out := make([]batchAnswer, len(batch))
	if len(batch) > 1 {
		var ops []raft.StateOp
		for _, b := range batch {
			ops = append(ops, b...)
		}
		rev, err := a.store.UpdateState(ctx, ops)
		if !errors.Is(err, raft.ErrRejected) {
			for i := range out {
				out[i] = batchAnswer{rev, err}
			}
			return out
		}
	}
	for i, b := range batch {
		rev, err := a.store.UpdateState(ctx, b)
		out[i] = batchAnswer{rev, err}
	}
	return out
}

// forward sends results this follower verified to the leader's member, in
// one request.
func (a *attestor) forward(ctx context.Context, batch [][]raft.StateOp) []batchAnswer {
	out := make([]batchAnswer, len(batch))
	fail := func(err error) []batchAnswer {
		for i := range out {
			out[i] = batchAnswer{err: err}
		}
		return out
	}
	id, addr := a.store.Leader()
	m, ok := a.store.Member(id)
	if id == "" || !ok || m.APIAddr == "" || a.leader == nil {
		return fail(&raft.NotLeaderError{LeaderID: id, LeaderAddr: addr})
	}
	answers, err := a.leader(m.APIAddr).RecordResults(ctx, batch)
	if err != nil {
		return fail(err)
	}
	for i, ans := range answers {
		switch {
		case ans.Code == "":
			out[i] = batchAnswer{rev: ans.Revision}
		case ans.Code == api.CodeRejected:
			out[i] = batchAnswer{err: fmt.Errorf("%w: %s", raft.ErrRejected, ans.Message)}
		default:
			out[i] = batchAnswer{err: &api.Error{Status: http.StatusServiceUnavailable, Code: ans.Code, Message: ans.Message}}
		}
	}
	return out
}

// RecordResults records results that another member produced (the
// leader's side of forward): attestation results and the monitor's risk
// and quarantines. Only those operations may come this way, and only from
// members (the API checks the peer token).
func (a *attestor) RecordResults(ctx context.Context, batch [][]raft.StateOp) ([]api.ResultAnswer, error) {
	if !a.store.IsLeader() {
		id, addr := a.store.Leader()
		return nil, &raft.NotLeaderError{LeaderID: id, LeaderAddr: addr}
	}
	for i, ops := range batch {
		for _, op := range ops {
			if op.Op != raft.OpSetAttestation && op.Op != raft.OpQuarantine && op.Op != raft.OpSetRisk {
				return nil, apiErr(http.StatusBadRequest, api.CodeBadRequest, "batch[%d]: %s is not part of an attestation result or a monitor's risk", i, op.Op)
			}
		}
	}
	answers := a.applyBatch(ctx, batch)
	out := make([]api.ResultAnswer, len(answers))
	for i, ans := range answers {
		switch {
		case ans.err == nil:
			out[i] = api.ResultAnswer{Revision: ans.rev}
		case errors.Is(ans.err, raft.ErrRejected):
			out[i] = api.ResultAnswer{Code: api.CodeRejected, Message: ans.err.Error()}
		default:
			out[i] = api.ResultAnswer{Code: api.CodeInternal, Message: ans.err.Error()}
		}
	}
	return out, nil
}

func apiErr(status int, code, format string, args ...any) error {
	return &api.Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// device finds a device that must attest and its class.
func (a *attestor) device(snap *topology.Snapshot, name string) (*topology.Device, *topology.Class, error) {
	c, err := a.subject(snap, topology.DeviceSubject(name))
	if err != nil {
		return nil, nil, err
	}
	d, _ := snap.Index().Device(name)
	return d, c, nil
}

// subject finds a device or gateway that must attest and the class whose
// attestation policy judges its evidence (a device's class, the class a
// gateway names).
func (a *attestor) subject(snap *topology.Snapshot, s topology.Subject) (*topology.Class, error) {
	ix := snap.Index()
	switch s.Kind {
	case topology.KindDevice:
		d, ok := ix.Device(s.Name)
		if !ok {
			return nil, apiErr(http.StatusNotFound, api.CodeNotFound, "no device named %q", s.Name)
		}
		c := ix.ClassOf(s)
		if c == nil || c.MaxAge == 0 {
			return nil, apiErr(http.StatusBadRequest, api.CodeBadRequest, "class %s of device %s requires no attestation", d.Class, s.Name)
		}
		return c, nil
	case topology.KindGateway:
		g, ok := ix.Gateway(s.Name)
		if !ok {
			return nil, apiErr(http.StatusNotFound, api.CodeNotFound, "no gateway named %q", s.Name)
		}
		if g.Class == "" {
			return nil, apiErr(http.StatusBadRequest, api.CodeBadRequest,
				"gateway %s has no class, so it requires no attestation (set gateways[].class to a device class with attestation)", s.Name)
		}
		c := ix.ClassOf(s)
		if c == nil || c.MaxAge == 0 {
			return nil, apiErr(http.StatusBadRequest, api.CodeBadRequest, "class %s of gateway %s requires no attestation", g.Class, s.Name)
		}
		return c, nil
	}
	return nil, apiErr(http.StatusBadRequest, api.CodeBadRequest, "only devices and gateways attest, not a subject of kind %s", s.Kind)
}

// nonceSubject is what a subject's nonces are bound to: a device's bare
// name, as before gateways attested (so that nonces already issued stay
// valid), and "gateway/<name>" for a gateway, which no device name can
// equal ('/' is not allowed in names), so a gateway's nonce never answers
// for a device of the same name or the reverse.
func nonceSubject(s topology.Subject) string {
	if s.Kind == topology.KindDevice {
		return s.Name
	}
	return s.String()
}

// subjectLog is the log attribute that names a subject: "device" for a
// device, as the logs always said, "gateway" for a gateway.
func subjectLog(s topology.Subject) slog.Attr {
	if s.Kind == topology.KindDevice || s.Kind == topology.KindGateway {
		return slog.String(s.Kind.String(), s.Name)
	}
	return slog.String("subject", s.String())
}

// Challenge issues a nonce for device's next evidence.
func (a *attestor) Challenge(device string) (api.ChallengeResponse, error) {
	if _, _, err := a.device(a.store.Current(), device); err != nil {
		return api.ChallengeResponse{}, err
	}
	nonce, exp, err := attest.NewNonce(a.key, nonceSubject(topology.DeviceSubject(device)), a.now(), a.ttl)
	if err != nil {
		return api.ChallengeResponse{}, err
	}
	return api.ChallengeResponse{Nonce: hex.EncodeToString(nonce), Expires: exp}, nil
}

// Attest verifies evidence for device, on this member, and records the
// result: the result and the nonce's single use are one entry of the log,
// proposed by the leader (a follower sends it there in a batch). The
// verification reads this member's replica, which may lag the log by a few
// milliseconds: a follower records only passes, and leaves evidence that
// fails to the leader (the API forwards it there), so that a lagging
// replica never records a failure the latest state would not. The nonce's
// single use is decided by the log whatever member verified.
func (a *attestor) Attest(ctx context.Context, device string, raw []byte) (api.AttestResponse, error) {
	resp, _, err := a.attestSubject(ctx, topology.DeviceSubject(device), raw, false)
	return resp, err
}

// attestSubject is Attest for a device or a gateway. With spire (the
// vigil_tpm node attestor's path, spiretpm.go) it adds three rules: a
// subject that may not join SPIRE this way, or is quarantined, is refused
// before anything is verified, so the nonce stays unused; a failure whose
// quote is not signed by the enrolled AK is not recorded (whoever can
// reach SPIRE's agent port could otherwise record failures for any
// subject, knowing only its public AK); and a failure that is recorded is
// then answered 403 refused, with the reasons. It returns the snapshot the
// evidence was verified against.
func (a *attestor) attestSubject(ctx context.Context, s topology.Subject, raw []byte, spire bool) (api.AttestResponse, *topology.Snapshot, error) {
	snap := a.store.Current()
	class, err := a.subject(snap, s)
	if spire {
		class, err = a.spireSubject(snap, s, class, err)
	}
	if err != nil {
		return api.AttestResponse{}, nil, err
	}
	ev, err := attest.ParseEvidence(raw)
	if err != nil {
		return api.AttestResponse{}, nil, apiErr(http.StatusBadRequest, api.CodeBadRequest, "%v", err)
	}
	if spire && ev.Format != topology.AttestTPM2Quote {
		return api.AttestResponse{}, nil, apiErr(http.StatusBadRequest, api.CodeBadRequest,
			"the vigil_tpm node attestor takes %s evidence, not %q", topology.AttestTPM2Quote, ev.Format)
	}
	now := a.now().UTC()
	nonce, err := hex.DecodeString(ev.Nonce)
	if err != nil {
		return api.AttestResponse{}, nil, apiErr(http.StatusBadRequest, api.CodeBadRequest, "nonce is not hex")
	}
	expires, err := attest.CheckNonce(a.key, nonceSubject(s), nonce, now)
	if err != nil {
		a.log.Warn("attestation refused: bad nonce", subjectLog(s), "err", err)
		if s.Kind != topology.KindDevice && errors.Is(err, attest.ErrNonceForged) {
			return api.AttestResponse{}, nil, apiErr(http.StatusBadRequest, api.CodeBadRequest, "the nonce was not issued by this cluster for %s", s)
		}
		return api.AttestResponse{}, nil, apiErr(http.StatusBadRequest, api.CodeBadRequest, "%v", err)
	}
	st := snap.SubjectState(s)
	enrolled, err := enrolledKeys(st)
	if err != nil {
		return api.AttestResponse{}, nil, err
	}
	start := time.Now()
	res := attest.Verify(raw, ev, enrolled, attest.PolicyOf(class), nonce, now)
	a.metrics.verified(ev.Format, time.Since(start))
	if (spire || class.SPIRETPM()) && !res.Passed() && !res.Authentic {
		// Not a quote the enrolled AK signed over this nonce: a forgery, or
		// an old genuine quote with the nonce field rewritten. Anyone who
		// reaches SPIRE's agent port (or holds a quote that passed through
		// it) could send it, so it says nothing of the subject: it is not
		// recorded (nor its nonce used), so that no one without the TPM
		// records failures that would evict the subject's agent or
		// quarantine it. Checked before a follower hands a failure to the
		// leader, which would only verify it again.
		if ok, held := a.warns.Allow("unauthentic", time.Now()); ok {
			a.log.Warn("security: attestation refused, not recorded: the quote is not signed by the enrolled AK over this nonce",
				subjectLog(s), "evidence", res.EvidenceDigest, "reasons", strings.Join(res.Reasons, "; "), "held_back", held)
		}
		return api.AttestResponse{}, nil, apiErr(http.StatusForbidden, api.CodeRefused,
			"%s: attestation refused and not recorded, for the quote is not signed by the enrolled AK over this attestation's nonce: %s", s, strings.Join(res.Reasons, "; "))
	}
	if !res.Passed() && !a.store.IsLeader() {
		// This replica may lag the log (an enrollment committed an instant
		// ago): only the leader, with the latest state, records a failure.
		// Nothing was recorded, so the nonce is still unused.
		id, addr := a.store.Leader()
		return api.AttestResponse{}, nil, &raft.NotLeaderError{LeaderID: id, LeaderAddr: addr}
	}
	att := &topology.Attestation{
		Status: res.Status, Method: res.Format, FirmwareVersion: res.FirmwareVersion, FirmwareSHA256: res.FirmwareSHA256,
		VerifiedAt: now, ExpiresAt: now.Add(class.MaxAge), Verifier: a.member, EvidenceDigest: res.EvidenceDigest, Reasons: res.Reasons,
	}
	if res.Clock != nil {
		att.Clock = &topology.TPMClock{ResetCount: res.Clock.ResetCount, RestartCount: res.Clock.RestartCount}
	} else if st != nil && st.Attestation != nil {
		att.Clock = st.Attestation.Clock // a failure does not reset the counters' floor
	}
	ops := []raft.StateOp{{Subject: s, Op: raft.OpSetAttestation, Attestation: att,
		Nonce: ev.Nonce, NonceExpires: expires}}
	if !res.Passed() && class.Attestation.Quarantine {
		ops = append(ops, raft.StateOp{Subject: s, Op: raft.OpQuarantine, Quarantine: &topology.Quarantine{
			Reason: clipReason("attestation failed: " + strings.Join(res.Reasons, "; ")), By: "vigil/attest", Since: now}})
	}
	rev, err := a.record(ctx, ops)
	if errors.Is(err, raft.ErrRejected) && strings.Contains(err.Error(), "replayed") {
		a.log.Warn("security: attestation replay refused", subjectLog(s), "evidence", res.EvidenceDigest, "nonce_expires", expires)
		a.metrics.replayed()
		if a.monitor != nil && s.Kind == topology.KindDevice {
			a.monitor.replayed(s.Name, res.Format, res.EvidenceDigest, now)
		}
		return api.AttestResponse{}, nil, apiErr(http.StatusConflict, api.CodeReplay, "nonce already used: this evidence is a replay")
	}
	if errors.Is(err, raft.ErrRejected) && strings.Contains(err.Error(), "forgotten") {
		// A replay, or a member whose clock is ahead made the log forget
		// nonces early (raft/nonces.go): refused either way.
		a.log.Warn("security: attestation refused: the log may have forgotten its nonce (is a member's clock ahead?)",
			subjectLog(s), "evidence", res.EvidenceDigest, "nonce_expires", expires)
	}
	if err != nil {
		return api.AttestResponse{}, nil, err
	}
	a.metrics.recorded(res)
	if res.Passed() {
		a.log.Info("attestation passed", subjectLog(s), "format", res.Format, "firmware", res.FirmwareVersion, "revision", rev)
	} else {
		a.log.Warn("attestation failed", subjectLog(s), "format", res.Format, "reasons", strings.Join(res.Reasons, "; "), "revision", rev)
		if a.monitor != nil && s.Kind == topology.KindDevice {
			// The monitor's attestation signals are about devices.
			a.monitor.attestationFailed(s.Name, res.Format, strings.Join(res.Reasons, "; "), now)
		}
		if spire {
			return api.AttestResponse{}, nil, apiErr(http.StatusForbidden, api.CodeRefused,
				"%s: attestation failed: %s", s, strings.Join(res.Reasons, "; "))
		}
	}
	return api.AttestResponse{Revision: rev, Attestation: att}, snap, nil
}

func clipReason(s string) string {
	if len(s) > 1000 {
		return s[:1000] + "…"
	}
	return s
}

// enrolledKeys reads a device's enrolled keys from its state.
func enrolledKeys(st *topology.SubjectState) (attest.Enrolled, error) {
	var e attest.Enrolled
	if st == nil {
		return e, nil
	}
	if en := st.Enrollment; en != nil {
		var err error
		if en.TPMAK != "" {
			if e.AK, err = parsePublicKey(en.TPMAK); err != nil {
				return e, fmt.Errorf("enrolled TPM AK: %w", err)
			}
		}
		if en.EATKey != "" {
			if e.EATKey, err = parsePublicKey(en.EATKey); err != nil {
				return e, fmt.Errorf("enrolled EAT key: %w", err)
			}
		}
	}
	if a := st.Attestation; a != nil && a.Clock != nil {
		e.Clock = &attest.TPMClock{ResetCount: a.Clock.ResetCount, RestartCount: a.Clock.RestartCount}
	}
	return e, nil
}

// parsePublicKey reads one PEM PUBLIC KEY (PKIX) of a kind attestation uses.
func parsePublicKey(pemText string) (crypto.PublicKey, error) {
	blk, rest := pem.Decode([]byte(pemText))
	if blk == nil || blk.Type != "PUBLIC KEY" || strings.TrimSpace(string(rest)) != "" {
		return nil, errors.New("must be exactly one PEM PUBLIC KEY block (PKIX)")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	switch k := k.(type) {
	case *ecdsa.PublicKey, ed25519.PublicKey:
		return k, nil
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("an RSA key of %d bits is too weak (2048 at least)", k.N.BitLen())
		}
		return k, nil
	}
	return nil, fmt.Errorf("unsupported key type %T", k)
}

// Enroll records device's attestation keys, replacing earlier ones.
func (a *attestor) Enroll(ctx context.Context, device, actor string, req api.EnrollRequest) (api.EnrollResponse, error) {
	return a.EnrollSubject(ctx, topology.DeviceSubject(device), actor, req)
}

var _ api.SubjectEnroller = (*attestor)(nil)

// EnrollSubject records a device's or a gateway's attestation keys,
// replacing earlier ones. A gateway attests only by TPM quote (through the
// vigil_tpm node attestor), so it is enrolled a TPM AK only.
func (a *attestor) EnrollSubject(ctx context.Context, s topology.Subject, actor string, req api.EnrollRequest) (api.EnrollResponse, error) {
	if _, err := a.subject(a.store.Current(), s); err != nil {
		return api.EnrollResponse{}, err
	}
	if s.Kind == topology.KindGateway {
		if req.EATKey != "" {
			return api.EnrollResponse{}, apiErr(http.StatusBadRequest, api.CodeBadRequest,
				"a gateway attests by TPM quote only: enroll its TPM AK (tpmAk), not an EAT key")
		}
		if req.TPMAK == "" {
			return api.EnrollResponse{}, apiErr(http.StatusBadRequest, api.CodeBadRequest, "give the gateway's TPM AK (tpmAk)")
		}
	}
	if req.TPMAK == "" && req.EATKey == "" {
		return api.EnrollResponse{}, apiErr(http.StatusBadRequest, api.CodeBadRequest, "give a TPM AK (tpmAk) or an EAT key (eatKey)")
	}
	// What is recorded is the keys re-encoded, never the text as sent: PEM
	// headers or other text around the block do not reach the log.
	h := sha256.New()
	en := &topology.Enrollment{By: actor, At: a.now().UTC()}
	for _, k := range []struct {
		name, pem string
		dst       *string
	}{{"tpmAk", req.TPMAK, &en.TPMAK}, {"eatKey", req.EATKey, &en.EATKey}} {
		if k.pem == "" {
			continue
		}
		pub, err := parsePublicKey(k.pem)
		if err != nil {
			return api.EnrollResponse{}, apiErr(http.StatusBadRequest, api.CodeBadRequest, "%s: %v", k.name, err)
		}
		der, _ := x509.MarshalPKIXPublicKey(pub)
		h.Write(der)
		*k.dst = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	}
	en.Fingerprint = hex.EncodeToString(h.Sum(nil))
	rev, err := a.store.UpdateState(ctx, []raft.StateOp{{Subject: s, Op: raft.OpEnroll, Enrollment: en}})
	if err != nil {
		return api.EnrollResponse{}, err
	}
	a.log.Info(s.Kind.String()+" enrolled", subjectLog(s), "fingerprint", en.Fingerprint, "by", actor, "revision", rev)
	return api.EnrollResponse{Revision: rev, Enrollment: en}, nil
}
