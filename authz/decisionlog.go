package authz

// The decision log file
//
// A decision log is a file of lines, each one JSON object ending in "\n".
// A line is a decision: two chain fields, then every field of Decision under
// its JSON name (HTML characters are not escaped):
//
//	{"seq":2,"prev":"<64 hex>","decision_id":"…","time":"…",…,"latency_us":112}
//
//   - seq is 1 on the first line of the file and grows by exactly 1 per line.
//   - prev is the lower-case hex SHA-256 of the previous line's exact bytes,
//     without its "\n"; on the first line it is 64 zeros.
//
// A line is an entry when it is a JSON object with a seq from 1 and a prev
// of 64 lower-case hex digits (parseChainLine); the writer and the verifier
// use the same test.
//
// Removing, reordering, inserting or editing a line therefore breaks the
// chain at that line or the next, and VerifyDecisionLog (auditverify.go)
// finds the first such line. Nothing comes after the last line to vouch for
// it, so an edit of the last line, or of the last k lines together with
// rewriting their chain, cannot be seen from the file alone: the verifier
// reports the hash of the last line (the head), for operators to anchor
// elsewhere and compare later.
//
// Restart. OpenDecisionLog reads the end of an existing file and continues
// its chain: seq is the last line's seq + 1, prev is that line's hash. A line
// that was written whole but lost only its "\n" counts as whole (a proper
// prefix of a JSON object is never a valid object, so a valid line is the
// complete line); the "\n" is added and the chain continues from it.
//
// Torn tail. A crash can leave the end of a write on disk: part of a line,
// or blocks of zero bytes, after the last complete line. The chain is not
// continued from such bytes as if they were an entry, and they are not
// removed either (they are evidence). Instead they are ended with "\n" and
// a new chain segment starts with a marker line:
//
//	{"seq":4,"prev":"<hash of the last complete line>","chain_restart":true,"torn":"<64 hex>","time":"…"}
//
// seq and prev continue from the last complete line, as if the torn bytes
// were not there, and torn is the SHA-256 of the torn bytes: all the bytes
// after the last complete line's "\n", without the one "\n" that ends them.
// The marker vouches for the torn bytes; the next decision's prev is the
// marker's hash. The verifier accepts torn bytes only in exactly that shape:
// bytes that are not an entry, directly followed by a marker that continues
// the chain from the line before them and whose torn hash matches them, that
// is, bytes that were the very tail of the file when the writer restarted.
// It reports each such restart. Torn bytes with no marker after them are an
// error (a truncated last line, or an invalid line), and so is a marker with
// no torn bytes before it. Torn bytes can span more than one line only when
// the writer crashed again while writing the marker; the marker written by
// the next start then covers all of them.
//
// Other lines. Besides decisions and chain_restart markers, the writer
// chains three kinds of line, each with seq and prev first:
//
//   - {"aggregate":"denies","count":N,…}: N denies of one asker past its
//     budget, folded into one line (denybudget.go);
//   - {"gap":"write-failed","dropped":N,"error":…}: the file could not be
//     written (a full disk) and N decisions were dropped before this line;
//   - {"oversize":N}: an entry that would have been longer than MaxLogLine
//     (clipping every field makes this impossible for decisions).
//
// No line is longer than MaxLogLine (limits.go). The verifier parses lines
// up to that length, and checks a longer line (older versions wrote them)
// by its leading seq and prev and its hash, then goes on.
//
// One process writes a file; two writers on one file break its chain.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync/atomic"
	"time"
)

const (
	// flushInterval bounds how long a written decision waits in the buffer.
	flushInterval = 100 * time.Millisecond
	// dropWarnInterval is the least time between two warnings about drops.
	dropWarnInterval = 10 * time.Second
	// maxTailScan bounds how far back OpenDecisionLog looks for the last
	// complete line.
	maxTailScan = 64 << 20
	// defaultDecisionBuffer is the default queue capacity.
	defaultDecisionBuffer = 65536
)

// zeroChainHash is prev on the first line of a file.
const zeroChainHash = "0000000000000000000000000000000000000000000000000000000000000000"

// DecisionLogConfig sets up a DecisionLog.
type DecisionLogConfig struct {
	// Path is the log file; decisions are appended to it. It is created
	// with mode 0600 if missing; its directory must exist.
	Path string
	// Buffer is how many decisions may wait for the writer (default 65536).
	Buffer int
	// Strict makes Record wait for room in the queue instead of dropping a
	// decision when the queue is full. While the file cannot be written
	// (a full disk) decisions are dropped and counted all the same: the
	// member keeps deciding.
	Strict bool
	// SyncInterval, when positive, fsyncs the file after a flush at most
	// this often. Zero leaves it to the operating system until Run ends,
	// which always fsyncs.
	SyncInterval time.Duration
	// Logger gets warnings about dropped decisions (default slog.Default()).
	Logger *slog.Logger
	// Denies is how many denies of one asker are logged one by one before
	// the rest are aggregated (default DefaultDenyBudget).
	Denies DenyBudget
}

// DecisionLog is the authorizer's hash-chained decision log: Record queues
// a decision without touching the disk and Run writes the queue to the file.
type DecisionLog struct {
	cfg   DecisionLogConfig
	queue chan *Decision

	closed   atomic.Bool  // set by Run when it stops taking decisions
	inflight atomic.Int64 // Record calls between their closed check and their send
	started  atomic.Bool
	written  atomic.Uint64
	dropped  atomic.Uint64
	head     atomic.Pointer[headMark] // last flushed line

	denies     *denyBudget
	aggregated atomic.Uint64 // denies folded into aggregate entries
	aggEntries atomic.Uint64
	degraded   atomic.Bool // the file cannot be written
	// unlogged counts the decisions Record dropped while degraded, for
	// the next gap entry (the writer counts those it drops itself).
	unlogged atomic.Uint64
	failures atomic.Uint64
	lastErr  atomic.Pointer[string]

	// Owned by Run.
	f    *os.File
	seq  uint64
	prev [64]byte // hex of the last line's hash
}

var _ Recorder = (*DecisionLog)(nil)

// decisionEntry is a decision line: the chain fields, then the decision.
type decisionEntry struct {
	Seq  uint64 `json:"seq"`
	Prev string `json:"prev"`
	*Decision
}

// restartEntry is the marker line that starts a chain segment after torn
// bytes.
type restartEntry struct {
	Seq          uint64    `json:"seq"`
	Prev         string    `json:"prev"`
	ChainRestart bool      `json:"chain_restart"`
	Torn         string    `json:"torn"`
	Time         time.Time `json:"time"`
}

// OpenDecisionLog opens (or creates) the log file and positions its chain
// after the last complete line; see the top of this file for torn tails.
func OpenDecisionLog(cfg DecisionLogConfig) (*DecisionLog, error) {
	if cfg.Path == "" || cfg.Path == "-" {
		return nil, errors.New("decision log: a file path is required")
	}
	if cfg.Buffer < 0 {
		return nil, fmt.Errorf("decision log: buffer %d is negative", cfg.Buffer)
	}
	if cfg.Buffer == 0 {
		cfg.Buffer = defaultDecisionBuffer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	f, err := os.OpenFile(cfg.Path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("decision log: %w", err)
	}
	if cfg.Denies == (DenyBudget{}) {
		cfg.Denies = DefaultDenyBudget
	}
	l := &DecisionLog{cfg: cfg, queue: make(chan *Decision, cfg.Buffer), f: f, denies: newDenyBudget(cfg.Denies)}
	if err := l.resume(); err != nil {
		f.Close()
		return nil, fmt.Errorf("decision log %s: %w", cfg.Path, err)
	}
	return l, nil
}

// resume sets seq and prev from the end of the file, ending a torn tail
// with a chain_restart marker.
func (l *DecisionLog) resume() (err error) {
	t, err := readLogTail(l.f)
	if err != nil {
		return err
	}
	l.seq = t.seq
	copy(l.prev[:], t.prev)
	var out []byte
	switch {
	case t.missingNewline:
		// The last line is whole and valid; only its "\n" was lost.
		out = []byte("\n")
	case len(t.torn) > 0:
		if t.torn[len(t.torn)-1] != '\n' {
			out = append(out, '\n')
		}
		sum := sha256.Sum256(bytes.TrimSuffix(t.torn, []byte("\n")))
		marker, err := json.Marshal(restartEntry{
			Seq: l.seq + 1, Prev: string(l.prev[:]), ChainRestart: true,
			Torn: hex.EncodeToString(sum[:]), Time: time.Now().UTC(),
		})
		if err != nil {
			return err
		}
		out = append(append(out, marker...), '\n')
		l.advance(marker)
		defer func() {
			if err == nil {
				l.cfg.Logger.Warn("decision log ended in a torn write; started a new chain segment",
					"path", l.cfg.Path, "torn_bytes", len(t.torn), "seq", l.seq)
			}
		}()
	default:
		l.head.Store(&headMark{seq: l.seq, hash: string(l.prev[:])})
		return nil
	}
	// One write, so that a crash now leaves at most one more torn piece.
	if _, err := l.f.Write(out); err != nil {
		return err
	}
	if err := l.f.Sync(); err != nil {
		return err
	}
	l.head.Store(&headMark{seq: l.seq, hash: string(l.prev[:])})
	return nil
}

// advance moves the chain past a line just written.
func (l *DecisionLog) advance(line []byte) {
	sum := sha256.Sum256(line)
	hex.Encode(l.prev[:], sum[:])
	l.seq++
}

// logTail is what the end of a log file says about its chain.
type logTail struct {
	seq            uint64 // seq of the last valid line; 0 if none
	prev           string // hash of that line; zeroChainHash if none
	torn           []byte // the bytes after it, when they are not a valid line
	missingNewline bool   // the last valid line is the end of the file, without "\n"
}

// readLogTail reads f backwards to its last valid line. Everything after that
// line's "\n" is torn.
func readLogTail(f *os.File) (logTail, error) {
	st, err := f.Stat()
	if err != nil {
		return logTail{}, err
	}
	size := st.Size()
	for window := int64(64 << 10); ; window *= 2 {
		start := max(size-window, 0)
		buf := make([]byte, size-start)
		if _, err := f.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
			return logTail{}, err
		}
		// Walk the lines of buf from the last one back; a line is known
		// whole when a "\n" precedes it in buf or it starts the file.
		end := len(buf)
		for {
			lineEnd := end
			if end > 0 && buf[end-1] == '\n' {
				lineEnd = end - 1
			}
			i := bytes.LastIndexByte(buf[:lineEnd], '\n')
			if i < 0 && start > 0 {
				break // this line may begin before buf: read further back
			}
			line := buf[i+1 : lineEnd]
			if e, err := parseChainLine(line); err == nil {
				sum := sha256.Sum256(line)
				return logTail{
					seq: e.Seq, prev: hex.EncodeToString(sum[:]),
					torn:           bytes.Clone(buf[end:]),
					missingNewline: end == len(buf) && lineEnd == end,
				}, nil
			}
			if i < 0 {
				// The start of the file and no valid line: all of it is torn.
				return logTail{prev: zeroChainHash, torn: buf}, nil
			}
			end = i + 1
		}
		if window >= maxTailScan {
			return logTail{}, fmt.Errorf("no complete entry in the last %d bytes", window)
		}
	}
}

// chainFields are the fields of a line that make the chain.
type chainFields struct {
	Seq          uint64 `json:"seq"`
	Prev         string `json:"prev"`
	ChainRestart bool   `json:"chain_restart"`
	Torn         string `json:"torn"`
}

// parseChainLine reads the chain fields of a line, which must be a JSON
// object with a seq from 1 and a prev of 64 lower-case hex digits.
func parseChainLine(line []byte) (chainFields, error) {
	var e chainFields
	if len(line) == 0 || line[0] != '{' {
		return e, errors.New("not a JSON object")
	}
	if err := json.Unmarshal(line, &e); err != nil {
		return e, fmt.Errorf("invalid JSON: %w", err)
	}
	if e.Seq == 0 {
		return e, errors.New("no seq")
	}
	if !isHexHash(e.Prev) {
		return e, errors.New("prev is not 64 lower-case hex digits")
	}
	if e.ChainRestart && !isHexHash(e.Torn) {
		return e, errors.New("chain_restart without a torn hash")
	}
	return e, nil
}

func isHexHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Record queues d for the log and returns at once; d is copied, so the
// caller may reuse it. Every string of the copy is cut to the log's bounds
// (limits.go), and a deny past its asker's budget is folded into an
// aggregate entry (denybudget.go) instead of being queued. When the queue is
// full, Record drops d and counts it, or, with Strict, waits for room (until
// Run has started, if need be). While the file cannot be written, and after
// Run has ended, every decision is dropped and counted, Strict or not.
func (l *DecisionLog) Record(d *Decision) {
	if d == nil {
		return
	}
	// inflight lets Run tell, after it sets closed, when no Record can
	// still put a decision in the queue (see Run).
	l.inflight.Add(1)
	defer l.inflight.Add(-1)
	if closed := l.closed.Load(); closed || l.degraded.Load() {
		l.dropped.Add(1)
		if !closed {
			l.unlogged.Add(1) // the gap entry written on recovery counts it
		}
		return
	}
	if !l.cfg.Strict && len(l.queue) == cap(l.queue) {
		l.dropped.Add(1) // full: drop without copying d
		return
	}
	c := *d
	c.clipForLog()
	if !c.Allowed && !l.denies.admit(&c) {
		l.aggregated.Add(1)
		return
	}
	if l.cfg.Strict {
		l.queue <- &c
		return
	}
	select {
	case l.queue <- &c:
	default:
		l.dropped.Add(1)
	}
}

// Stats returns how many decisions have been written to the file (flushed)
// and how many were dropped.
func (l *DecisionLog) Stats() (written, dropped uint64) {
	return l.written.Load(), l.dropped.Load()
}

// LogStatus is the state of a decision log, for GET /v1/node.
type LogStatus struct {
	// Written decisions were flushed to the file, one line each.
	Written uint64 `json:"written"`
	// Dropped decisions are in no line: the queue was full, the file could
	// not be written, or the log had stopped.
	Dropped uint64 `json:"dropped"`
	// Aggregated denies were folded into AggregateEntries lines (deny
	// storms past an asker's budget).
	Aggregated       uint64 `json:"aggregated"`
	AggregateEntries uint64 `json:"aggregateEntries"`
	// Degraded is set while the file cannot be written (a full disk): the
	// member keeps deciding, and the decisions are dropped and counted.
	Degraded bool `json:"degraded"`
	// LastError is the last write error, kept after recovery.
	LastError string `json:"lastError,omitempty"`
	// WriteFailures counts the times writing failed and the log degraded.
	WriteFailures uint64 `json:"writeFailures"`
	// Seq and Head are the last line flushed to the file.
	Seq  uint64 `json:"seq"`
	Head string `json:"head"`
}

// Status reports the log's counters and health.
func (l *DecisionLog) Status() LogStatus {
	st := LogStatus{
		Written: l.written.Load(), Dropped: l.dropped.Load(),
		Aggregated: l.aggregated.Load(), AggregateEntries: l.aggEntries.Load(),
		Degraded: l.degraded.Load(), WriteFailures: l.failures.Load(),
	}
	if e := l.lastErr.Load(); e != nil {
		st.LastError = *e
	}
	st.Seq, st.Head = l.Head()
	return st
}

// Run writes queued decisions to the file, one line each, flushing when the
// queue is empty and at least every 100ms, and writes the aggregated denies
// every second, until ctx ends. Then it writes what is queued, flushes,
// fsyncs, closes the file and returns.
//
// A write error does not end Run: the member must keep deciding with a
// full disk. The log degrades: what was buffered and what arrives is
// dropped and counted, the error is logged once, and every second Run tries
// to write again, from the end of the file as it is (a torn line there is
// closed with a chain_restart marker, as at a restart), then writes a gap
// entry with how many decisions were dropped and why. Run must be called
// once for the file to be written and closed.
func (l *DecisionLog) Run(ctx context.Context) error {
	if !l.started.CompareAndSwap(false, true) {
		return errors.New("decision log: Run called twice")
	}
	w := newDecisionWriter(l)
	tick := time.NewTicker(flushInterval)
	defer tick.Stop()
	var lastWarn, lastAgg time.Time
	var warned uint64
	warnDrops := func(force bool) {
		d := l.dropped.Load()
		if d > warned && (force || time.Since(lastWarn) >= dropWarnInterval) {
			l.cfg.Logger.Warn("decision log dropped decisions", "path", l.cfg.Path,
				"dropped", d-warned, "dropped_total", d)
			warned, lastWarn = d, time.Now()
		}
	}
	for done := false; !done; {
		select {
		case d := <-l.queue:
			w.write(d)
		drain:
			for {
				select {
				case d := <-l.queue:
					w.write(d)
					if time.Since(w.flushed) >= flushInterval {
						w.flush()
					}
				default:
					break drain
				}
			}
			w.flush()
		case now := <-tick.C:
			if now.Sub(lastAgg) >= aggregateInterval {
				lastAgg = now
				w.writeAggregates(now)
			}
			w.flush()
			w.recover(now)
			warnDrops(false)
		case <-ctx.Done():
			done = true
		}
	}
	// Stop taking decisions, then empty the queue until no Record is
	// between its closed check and its send: a Record that saw closed
	// unset has raised inflight first, so once inflight is 0 after closed
	// is set, nothing more can enter the queue.
	l.closed.Store(true)
	for {
		idle := l.inflight.Load() == 0
		for more := true; more; {
			select {
			case d := <-l.queue:
				w.write(d)
			default:
				more = false
			}
		}
		if idle {
			break
		}
		runtime.Gosched()
	}
	w.writeAggregates(time.Now())
	w.flush()
	var err error
	if l.degraded.Load() {
		err = errors.New(*l.lastErr.Load())
	} else if serr := l.f.Sync(); serr != nil {
		err = serr
	}
	if cerr := l.f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	warnDrops(true)
	if err != nil {
		return fmt.Errorf("decision log %s: %w", l.cfg.Path, err)
	}
	return nil
}

// aggregateInterval is how often folded denies are written.
const aggregateInterval = time.Second

// recoverInterval is how often a degraded log tries to write again.
const recoverInterval = time.Second

// decisionWriter encodes, buffers and chains lines; it belongs to Run.
type decisionWriter struct {
	l       *DecisionLog
	buf     *bufio.Writer
	line    bytes.Buffer
	enc     *json.Encoder
	scratch []byte // appendDecision's line
	pending uint64 // decisions buffered since the last flush
	dirty   bool   // flushed since the last fsync
	flushed time.Time
	synced  time.Time
	// While degraded: when the failure began, how many decisions have been
	// dropped since, and the last recovery attempt.
	failedAt    time.Time
	gapDropped  uint64
	lastAttempt time.Time
}

// gapEntry is the line a recovered log writes: decisions are missing here.
type gapEntry struct {
	Seq     uint64    `json:"seq"`
	Prev    string    `json:"prev"`
	Gap     string    `json:"gap"` // "write-failed"
	Time    time.Time `json:"time"`
	Until   time.Time `json:"until"`
	Dropped uint64    `json:"dropped"`
	Error   string    `json:"error"`
}

// oversizeEntry replaces an entry that would exceed MaxLogLine; clipping
// makes that impossible for decisions, so it is a last line of defence.
type oversizeEntry struct {
	Seq      uint64    `json:"seq"`
	Prev     string    `json:"prev"`
	Oversize int       `json:"oversize"` // the encoded length
	Time     time.Time `json:"time"`
}

func newDecisionWriter(l *DecisionLog) *decisionWriter {
	w := &decisionWriter{l: l, buf: bufio.NewWriterSize(l.f, 256<<10), flushed: time.Now()}
	w.enc = json.NewEncoder(&w.line)
	w.enc.SetEscapeHTML(false)
	return w
}

// write appends d's line to the buffer, or drops it while degraded.
func (w *decisionWriter) write(d *Decision) {
	if w.l.degraded.Load() {
		w.l.dropped.Add(1)
		w.gapDropped++
		return
	}
	w.pending++
	if err := w.appendDecision(d); err != nil {
		w.fail(err) // drops d with the rest of the buffer
	}
}

// appendDecision is append for a decision, encoded without reflection
// (appendDecisionEntry); the other entries are rare and use encoding/json.
func (w *decisionWriter) appendDecision(d *Decision) error {
	seq, prev := w.l.seq+1, string(w.l.prev[:])
	line, err := appendDecisionEntry(w.scratch[:0], seq, prev, d)
	w.scratch = line[:0]
	if err != nil {
		return err
	}
	if len(line) > MaxLogLine {
		return w.append(func(seq uint64, prev string) any { return decisionEntry{Seq: seq, Prev: prev, Decision: d} })
	}
	line = append(line, '\n')
	if _, err := w.buf.Write(line); err != nil {
		return err
	}
	w.l.advance(line[:len(line)-1])
	return nil
}

// append encodes the entry entry(seq, prev) makes for the next place in
// the chain, buffers it and advances the chain.
func (w *decisionWriter) append(entry func(seq uint64, prev string) any) error {
	seq, prev := w.l.seq+1, string(w.l.prev[:])
	w.line.Reset()
	if err := w.enc.Encode(entry(seq, prev)); err != nil {
		return err
	}
	if w.line.Len()-1 > MaxLogLine {
		n := w.line.Len() - 1
		w.line.Reset()
		if err := w.enc.Encode(oversizeEntry{Seq: seq, Prev: prev, Oversize: n, Time: time.Now().UTC()}); err != nil {
			return err
		}
	}
	line := w.line.Bytes() // ends in "\n"
	if _, err := w.buf.Write(line); err != nil {
		return err
	}
	w.l.advance(line[:len(line)-1])
	return nil
}

// writeAggregates writes the denies folded since the last call.
func (w *decisionWriter) writeAggregates(now time.Time) {
	for _, g := range w.l.denies.take(now) {
		if w.l.degraded.Load() {
			w.l.dropped.Add(g.Count)
			w.gapDropped += g.Count
			continue
		}
		if err := w.append(func(seq uint64, prev string) any { g.Seq, g.Prev = seq, prev; return g }); err != nil {
			w.fail(err)
			w.l.dropped.Add(g.Count)
			w.gapDropped += g.Count
			continue
		}
		w.l.aggEntries.Add(1)
	}
}

func (w *decisionWriter) flush() {
	if w.l.degraded.Load() {
		return
	}
	w.flushed = time.Now()
	if w.pending > 0 || w.buf.Buffered() > 0 {
		if err := w.buf.Flush(); err != nil {
			w.fail(err)
			return
		}
		w.l.written.Add(w.pending)
		w.pending, w.dirty = 0, true
		w.l.head.Store(&headMark{seq: w.l.seq, hash: string(w.l.prev[:])})
	}
	// fsync at most every SyncInterval; the ticker's flushes make sure the
	// last batch before a pause is synced too.
	if iv := w.l.cfg.SyncInterval; iv > 0 && w.dirty && w.flushed.Sub(w.synced) >= iv {
		w.synced, w.dirty = w.flushed, false
		if err := w.l.f.Sync(); err != nil {
			w.fail(err)
		}
	}
}

// fail degrades the log after a write error: what is buffered is dropped
// (it may or may not have reached the file; recover finds out), and the
// member goes on deciding.
func (w *decisionWriter) fail(err error) {
	w.l.dropped.Add(w.pending)
	w.gapDropped = w.pending
	w.pending = 0
	w.buf.Reset(w.l.f)
	msg := err.Error()
	w.l.lastErr.Store(&msg)
	w.l.failures.Add(1)
	w.failedAt = time.Now()
	w.lastAttempt = w.failedAt
	w.l.degraded.Store(true)
	w.l.cfg.Logger.Error("decision log cannot be written; deciding goes on and decisions are dropped until it can",
		"path", w.l.cfg.Path, "err", err)
}

// recover tries, at most every recoverInterval, to write a degraded log
// again: it continues the chain from the file as it is (resume) and writes
// a gap entry for what was dropped.
//
// The gap entry counts every decision dropped since the failure: those the
// writer dropped and those Record turned away. A Record that saw the log
// degraded just before it healed counts its decision a moment later; a
// second gap entry, at the next tick, records such stragglers.
func (w *decisionWriter) recover(now time.Time) {
	if !w.l.degraded.Load() {
		if w.l.unlogged.Load() > 0 && now.Sub(w.lastAttempt) >= flushInterval {
			n := w.l.unlogged.Swap(0)
			if err := w.writeGap(w.failedAt, w.lastAttempt, n); err != nil {
				w.l.unlogged.Add(n) // in the gap entry of the next recovery
				w.fail(err)
			}
		}
		return
	}
	if now.Sub(w.lastAttempt) < recoverInterval {
		return
	}
	w.lastAttempt = now
	if err := w.l.resume(); err != nil {
		return
	}
	// Taken now, put back if the entry cannot be written.
	w.gapDropped += w.l.unlogged.Swap(0)
	if w.writeGap(w.failedAt, now, w.gapDropped) != nil {
		return
	}
	dropped := w.gapDropped
	w.gapDropped = 0
	w.l.degraded.Store(false)
	w.l.cfg.Logger.Info("decision log writable again; a gap entry records the decisions dropped",
		"path", w.l.cfg.Path, "dropped", dropped, "seq", w.l.seq)
}

// writeGap writes and flushes, from an empty buffer, a gap entry for
// dropped decisions lost between from and until. On a failure the buffer
// is left empty and the chain is where the file says only after the next
// resume.
func (w *decisionWriter) writeGap(from, until time.Time, dropped uint64) error {
	gap := gapEntry{Gap: "write-failed", Time: from.UTC(), Until: until.UTC(), Dropped: dropped, Error: clip(*w.l.lastErr.Load(), maxLoggedReason)}
	err := w.append(func(seq uint64, prev string) any { gap.Seq, gap.Prev = seq, prev; return gap })
	if err == nil {
		err = w.buf.Flush()
	}
	if err != nil {
		w.buf.Reset(w.l.f)
		return err
	}
	w.l.head.Store(&headMark{seq: w.l.seq, hash: string(w.l.prev[:])})
	return nil
}
