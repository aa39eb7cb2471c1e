package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/topology"
)

// Evidence bundles
//
// When the playbook acts on a subject it seals the subject's recent
// history (EvidenceWindow, 24 h by default) into a bundle: every line of
// every member's decision log and access log that names the subject. The
// bundle is a hash-chained file in the decision log's format (seq, prev),
// so `vigil audit verify` checks it line by line:
//
//	{"seq":1,"prev":"000…","evidence_bundle":"vigil/v1","incident":…,"subject":…,"spiffe_id":…,"since":…,"until":…,"sealed_by":…}
//	{"seq":2,"prev":…,"member":"m1","source":"decision","entry":{…the log line as written…}}
//	{"seq":3,"prev":…,"member":"m2","source":"missing","error":"…"}          a member that could not answer
//	{"seq":N,"prev":…,"seal":{"entries":K,"members":[…],"key":"<ed25519 public key>","signature":"<of the previous line's hash>"}}
//
// The seal is signed with the member's audit key (the one its decision-log
// checkpoints are signed with), and the hash of the sealing line is
// recorded in the incident's evidence action, in the replicated log: a
// bundle altered afterwards no longer matches it. Each entry keeps the
// original line with its own seq and prev, to be found in that member's
// log. An original line too long for a bundle line is kept by its hash.

// maxEvidenceLines and maxEvidenceBytes bound what one member contributes
// from each log (the most recent lines).
const (
	maxEvidenceLines = 200_000
	maxEvidenceBytes = 64 << 20
)

// evidenceScans lets one scan of this member's logs run at a time: a
// city-wide incident (hundreds of playbooks at once) must not turn into
// hundreds of concurrent reads of a large decision log competing with
// Checks for the CPU. Later scans wait their turn.
var evidenceScans = make(chan struct{}, 1)

// Evidence writes this member's log lines that name sub and are no older
// than since, one {"source":…,"entry":…} object per line.
func (m *monitorPart) Evidence(ctx context.Context, sub topology.Subject, since time.Time, w io.Writer) error {
	id, ok := m.n.store.Current().Index().SPIFFEID(sub)
	if !ok {
		return fmt.Errorf("no %s", sub)
	}
	needle := []byte(strconv.Quote(id))
	select {
	case evidenceScans <- struct{}{}:
		defer func() { <-evidenceScans }()
	case <-ctx.Done():
		return ctx.Err()
	}
	bw := bufio.NewWriterSize(w, 1<<16)
	for _, src := range []struct{ name, path string }{
		{"decision", m.n.authz.cfg.DecisionLog},
		{"access", m.access.path + ".1"},
		{"access", m.access.path},
	} {
		lines, err := grepLog(ctx, src.path, id, needle, since)
		if err != nil {
			return err
		}
		for _, l := range lines {
			bw.WriteString(`{"source":"` + src.name + `","entry":`)
			bw.Write(l)
			bw.WriteString("}\n")
		}
	}
	return bw.Flush()
}

// grepLog returns the last maxEvidenceLines lines of a JSON-lines file
// that contain needle and whose "time" is not before since.
func grepLog(ctx context.Context, path, id string, needle []byte, since time.Time) ([][]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var out [][]byte
	size := 0
	for n := 0; ; n++ {
		if n%4096 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			for errors.Is(err, bufio.ErrBufferFull) { // a line longer than any we write: skip it
				_, err = r.ReadSlice('\n')
			}
			continue
		}
		if len(line) > 0 && bytes.Contains(line, needle) {
			line = bytes.TrimRight(line, "\n")
			// The quoted ID may be anywhere in the line (a device can put
			// another's ID in its request path): only a line whose
			// subject, peer or forwarded identity is the subject counts.
			var t struct {
				Time      time.Time `json:"time"`
				Subject   string    `json:"subject"`
				Peer      string    `json:"peer"`
				Forwarded string    `json:"forwarded"`
			}
			if json.Unmarshal(line, &t) == nil && !t.Time.Before(since) && (t.Subject == id || t.Peer == id || t.Forwarded == id) {
				out = append(out, bytes.Clone(line))
				size += len(line)
				for len(out) > maxEvidenceLines || size > maxEvidenceBytes {
					size -= len(out[0])
					out = out[1:]
				}
			}
		}
		if err != nil {
			return out, nil
		}
	}
}

// bundleWriter writes hash-chained lines.
type bundleWriter struct {
	w    *bufio.Writer
	seq  uint64
	prev string
	n    int
}

func (b *bundleWriter) line(fields string) error {
	b.seq++
	l := `{"seq":` + strconv.FormatUint(b.seq, 10) + `,"prev":"` + b.prev + `",` + fields + `}`
	if len(l) > authz.MaxLogLine {
		return fmt.Errorf("bundle line of %d bytes", len(l))
	}
	sum := sha256.Sum256([]byte(l))
	b.prev = hex.EncodeToString(sum[:])
	if _, err := b.w.WriteString(l + "\n"); err != nil {
		return err
	}
	return nil
}

func jsonString(s string) string { b, _ := json.Marshal(s); return string(b) }

// seal collects the subject's lines from every member, writes the bundle
// and returns the evidence action.
func (m *monitorPart) seal(ctx context.Context, inc topology.Incident, info subjectInfo, by string) topology.Action {
	act := topology.Action{Name: "evidence", By: by}
	head, entries, err := m.writeBundle(ctx, inc, info)
	act.At = m.n.cfg.Clock().UTC()
	if err != nil {
		act.Outcome, act.Detail = topology.ActionFailed, clipReason(err.Error())
		m.log.Error("monitor: sealing evidence failed", "incident", inc.ID, "err", err)
		return act
	}
	act.Outcome = topology.ActionOK
	act.Detail = fmt.Sprintf("%d log lines of the last %s sealed at member %s; bundle head sha256:%s (vigil incident export %s)",
		entries, m.cfg.EvidenceWindow, m.n.cfg.ID, head, inc.ID)
	return act
}

func (m *monitorPart) writeBundle(ctx context.Context, inc topology.Incident, info subjectInfo) (head string, entries int, err error) {
	until := m.n.cfg.Clock().UTC()
	since := until.Add(-m.cfg.EvidenceWindow)
	path := filepath.Join(m.evidenceDir(), inc.ID+".log")
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(tmp)
	defer f.Close()
	b := &bundleWriter{w: bufio.NewWriterSize(f, 1<<16), prev: "0000000000000000000000000000000000000000000000000000000000000000"}
	if err := b.line(`"evidence_bundle":"vigil/v1","incident":` + jsonString(inc.ID) + `,"subject":` + jsonString(inc.Subject.String()) +
		`,"spiffe_id":` + jsonString(info.SPIFFEID) + `,"since":` + jsonString(since.Format(time.RFC3339Nano)) +
		`,"until":` + jsonString(until.Format(time.RFC3339Nano)) + `,"sealed_by":` + jsonString(m.n.cfg.ID) + `,"time":` + jsonString(until.Format(time.RFC3339Nano))); err != nil {
		return "", 0, err
	}
	st, err := m.n.store.Status()
	if err != nil {
		return "", 0, err
	}
	var members []string
	for _, mem := range st.Members {
		members = append(members, mem.ID)
		var rc io.ReadCloser
		if mem.ID == m.n.cfg.ID {
			pr, pw := io.Pipe()
			go func() { pw.CloseWithError(m.Evidence(ctx, inc.Subject, since, pw)) }()
			rc = pr
		} else if reg, ok := m.n.store.Member(mem.ID); ok && reg.APIAddr != "" {
			cctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			rc, err = m.n.conn.Client(reg.APIAddr, m.n.peer).Evidence(cctx, inc.Subject, since)
		} else {
			err = errors.New("no API address registered")
		}
		if err != nil {
			if lerr := b.line(`"member":` + jsonString(mem.ID) + `,"source":"missing","error":` + jsonString(clipReason(err.Error()))); lerr != nil {
				return "", 0, lerr
			}
			err = nil
			continue
		}
		n, cerr := copyEvidence(b, mem.ID, rc)
		rc.Close()
		entries += n
		if cerr != nil {
			if lerr := b.line(`"member":` + jsonString(mem.ID) + `,"source":"missing","error":` + jsonString(clipReason(cerr.Error()))); lerr != nil {
				return "", 0, lerr
			}
		}
	}
	key := m.n.audit.key
	sig := ed25519.Sign(key, []byte("vigil evidence bundle v1\n"+inc.ID+"\n"+b.prev))
	ml, _ := json.Marshal(members)
	if err := b.line(`"seal":{"incident":` + jsonString(inc.ID) + `,"entries":` + strconv.Itoa(entries) + `,"members":` + string(ml) +
		`,"key":"` + base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey)) + `","signature":"` + base64.StdEncoding.EncodeToString(sig) + `"}`); err != nil {
		return "", 0, err
	}
	if err := b.w.Flush(); err != nil {
		return "", 0, err
	}
	if err := f.Sync(); err != nil {
		return "", 0, err
	}
	if err := f.Close(); err != nil {
		return "", 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", 0, err
	}
	return b.prev, entries, nil
}

// copyEvidence wraps a member's {"source","entry"} lines into bundle lines.
func copyEvidence(b *bundleWriter, member string, r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 4*authz.MaxLogLine)
	n := 0
	prefix := `"member":` + jsonString(member) + `,`
	for sc.Scan() {
		var e struct {
			Source string          `json:"source"`
			Entry  json.RawMessage `json:"entry"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || (e.Source != "decision" && e.Source != "access") {
			return n, fmt.Errorf("member %s sent a line that is not evidence", member)
		}
		fields := prefix + `"source":"` + e.Source + `","entry":` + string(e.Entry)
		if len(fields) > authz.MaxLogLine-200 {
			sum := sha256.Sum256(e.Entry)
			fields = prefix + `"source":"` + e.Source + `","entry_sha256":"` + hex.EncodeToString(sum[:]) + `","entry_bytes":` + strconv.Itoa(len(e.Entry))
		}
		if err := b.line(fields); err != nil {
			return n, err
		}
		n++
	}
	return n, sc.Err()
}

// accessLog keeps the access-log entries this member received (gRPC ALS),
// as JSON lines, for evidence: one file and its predecessor, each up to
// accessLogMax bytes.
type accessLog struct {
	path    string
	ch      chan []byte
	log     *slog.Logger
	mu      sync.Mutex
	size    int64
	written atomic.Uint64
	dropped atomic.Uint64
	lastErr atomic.Value
}

const accessLogMax = 256 << 20

func openAccessLog(path string, log *slog.Logger) (*accessLog, error) {
	a := &accessLog{path: path, ch: make(chan []byte, 1<<14), log: log}
	if fi, err := os.Stat(path); err == nil {
		a.size = fi.Size()
	}
	return a, nil
}

// add queues one entry; it never blocks.
func (a *accessLog) add(line []byte) {
	select {
	case a.ch <- line:
	default:
		a.dropped.Add(1)
	}
}

func (a *accessLog) run(ctx context.Context) error {
	var f *os.File
	var w *bufio.Writer
	open := func() error {
		var err error
		f, err = os.OpenFile(a.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		w = bufio.NewWriterSize(f, 1<<16)
		return nil
	}
	defer func() {
		if f != nil {
			w.Flush()
			f.Close()
		}
	}()
	flush := time.NewTicker(time.Second)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-flush.C:
			if w != nil {
				w.Flush()
			}
		case line := <-a.ch:
			if f == nil {
				if err := open(); err != nil {
					a.dropped.Add(1)
					a.lastErr.Store(err.Error())
					continue
				}
			}
			if a.size+int64(len(line)) > accessLogMax {
				w.Flush()
				f.Close()
				f = nil
				if err := os.Rename(a.path, a.path+".1"); err != nil {
					a.log.Error("monitor: rotating the access log", "err", err)
				}
				a.size = 0
				if err := open(); err != nil {
					a.dropped.Add(1)
					a.lastErr.Store(err.Error())
					continue
				}
			}
			if _, err := w.Write(append(line, '\n')); err != nil {
				a.dropped.Add(1)
				a.lastErr.Store(err.Error())
				continue
			}
			a.size += int64(len(line)) + 1
			a.written.Add(1)
		}
	}
}

func (a *accessLog) status() map[string]any {
	out := map[string]any{"path": a.path, "written": a.written.Load(), "dropped": a.dropped.Load()}
	if e, ok := a.lastErr.Load().(string); ok {
		out["error"] = e
	}
	return out
}
