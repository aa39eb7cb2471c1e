package authz

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
)

// VerifyReport is what VerifyDecisionLog found in an intact log.
type VerifyReport struct {
	// Entries is the number of decisions; chain_restart markers are not
	// counted.
	Entries int
	// Lines is the number of lines read, markers and torn lines included.
	Lines int
	// Seq is the seq of the last line, 0 for an empty log.
	Seq uint64
	// Head is the hex SHA-256 of the last line (64 zeros for an empty log).
	// Nothing in the file vouches for the last line, so an edit of it is
	// invisible to the chain: record the head elsewhere (a ticket, another
	// system's log) and compare it later to detect one.
	Head string
	// Restarts lists the chain segments started after a torn write.
	Restarts []ChainRestart
	// Unchecked lists entries longer than MaxLogLine (older versions of
	// Vigil could write them): their chain fields and hash were checked,
	// their content was not read.
	Unchecked []UncheckedLine
	// CheckpointsChecked and CheckpointProblems are set by
	// VerifyDecisionLogAgainst.
	CheckpointsChecked int
	CheckpointProblems []CheckpointProblem
}

// UncheckedLine is an entry too long to read whole.
type UncheckedLine struct {
	Line  int
	Seq   uint64
	Bytes int
}

// ChainRestart is a chain_restart marker and the torn bytes it vouches for.
type ChainRestart struct {
	Line      int // line of the marker
	TornLine  int // first line of the torn bytes
	TornLines int // how many lines the torn bytes take
}

// Problem names the kind of damage VerifyDecisionLog found.
type Problem string

// The kinds of damage. Where the chain alone cannot tell two causes apart,
// the kind is the likelier one given the line after the break.
const (
	// ProblemEdited: a line's hash is not the prev of the line after it.
	ProblemEdited Problem = "edited"
	// ProblemRemoved: seq jumps forward; lines are missing before this one.
	ProblemRemoved Problem = "removed"
	// ProblemReordered: a line stands where another seq is due, and the
	// missing seq comes later.
	ProblemReordered Problem = "reordered"
	// ProblemInserted: a line claims the same place in the chain as another.
	ProblemInserted Problem = "inserted"
	// ProblemInvalid: a line is not an entry (not JSON, no seq or prev), or
	// is a chain_restart marker the writer would not have written.
	ProblemInvalid Problem = "invalid"
	// ProblemTruncated: the file ends in the middle of a line with no
	// chain_restart after it.
	ProblemTruncated Problem = "truncated"
)

// VerifyError is the first place where a log's chain is broken.
type VerifyError struct {
	Line    int // 1-based line number of the first bad line
	Problem Problem
	Detail  string
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("line %d: %s: %s", e.Line, e.Problem, e.Detail)
}

// VerifyDecisionLog reads a decision log (format at the top of
// decisionlog.go) and checks its hash chain. It returns a *VerifyError for
// the first bad line, any other error for a failure to read, and on success
// a report with the head hash that the caller should anchor elsewhere.
func VerifyDecisionLog(r io.Reader) (VerifyReport, error) {
	return verifyDecisionLog(r, nil)
}

// verifyDecisionLog is VerifyDecisionLog, calling onLine (if not nil) with
// the seq and hash of every line that chains.
func verifyDecisionLog(r io.Reader, onLine func(seq uint64, hash string)) (VerifyReport, error) {
	var rep VerifyReport
	src := &logLineSource{r: bufio.NewReaderSize(r, 64<<10)}
	last := chainLink{hash: zeroChainHash}
	var torn tornRun // lines after last that are not entries
	for {
		ln, err := src.next()
		if err != nil {
			return rep, err
		}
		if ln == nil {
			break
		}
		rep.Lines++
		if ln.err != nil {
			torn.add(ln)
			continue
		}
		e := ln.e
		if torn.count > 0 {
			// Torn bytes are only legitimate when the marker that the writer
			// wrote right after them at its restart vouches for them.
			if !e.ChainRestart {
				return rep, &VerifyError{torn.first, ProblemInvalid, torn.firstErr.Error()}
			}
			if sum := torn.sum(); sum != e.Torn {
				return rep, &VerifyError{torn.first, ProblemInvalid, fmt.Sprintf(
					"%v, and the chain_restart at line %d does not vouch for these bytes", torn.firstErr, ln.n)}
			}
		} else if e.ChainRestart {
			return rep, &VerifyError{ln.n, ProblemInvalid, "chain_restart marker with no torn bytes before it"}
		}
		if e.Seq != last.seq+1 || e.Prev != last.hash {
			next, err := src.peek()
			if err != nil {
				return rep, err
			}
			return rep, classifyBreak(last, ln, next)
		}
		if torn.count > 0 {
			rep.Restarts = append(rep.Restarts, ChainRestart{Line: ln.n, TornLine: torn.first, TornLines: torn.count})
			torn = tornRun{}
		}
		if !e.ChainRestart {
			rep.Entries++
		}
		if ln.size > len(ln.b) {
			rep.Unchecked = append(rep.Unchecked, UncheckedLine{Line: ln.n, Seq: e.Seq, Bytes: ln.size})
		}
		last = chainLink{line: ln.n, seq: e.Seq, prev: e.Prev, hash: ln.hash}
		rep.Seq, rep.Head = last.seq, last.hash
		if onLine != nil {
			onLine(last.seq, last.hash)
		}
	}
	if len(rep.Head) == 0 {
		rep.Head = zeroChainHash
	}
	switch {
	case torn.count == 1 && !torn.firstTerminated && torn.firstLen <= MaxLogLine:
		return rep, &VerifyError{torn.first, ProblemTruncated, fmt.Sprintf(
			"the file ends %d bytes into an entry, with no chain_restart after it (a torn or cut write)", torn.firstLen)}
	case torn.count > 0:
		return rep, &VerifyError{torn.first, ProblemInvalid, torn.firstErr.Error()}
	}
	return rep, nil
}

// chainLink is the last good line: what the next line must chain to.
type chainLink struct {
	line int    // 0 before the first line
	seq  uint64 // 0 before the first line
	prev string // its own prev
	hash string // its hash
}

// classifyBreak explains why line c does not chain to last, looking at the line
// after c (next, nil at the end of the file) to tell likely causes apart.
func classifyBreak(last chainLink, c, next *logLine) *VerifyError {
	want := last.seq + 1
	e := c.e
	// nextIs reports whether next is an entry with this seq and prev.
	nextIs := func(seq uint64, prev string) bool {
		return next != nil && next.err == nil && next.e.Seq == seq && next.e.Prev == prev
	}
	switch {
	case e.Seq == want && nextIs(e.Seq, last.hash):
		return &VerifyError{c.n, ProblemInserted, fmt.Sprintf(
			"seq %d with a prev that matches no line; line %d holds seq %d and chains to line %d", e.Seq, next.n, e.Seq, last.line)}
	case e.Seq == want && last.line == 0:
		return &VerifyError{c.n, ProblemEdited, "prev of the first line is not 64 zeros"}
	case e.Seq == want:
		return &VerifyError{last.line, ProblemEdited, fmt.Sprintf(
			"its hash does not match prev of line %d", c.n)}
	case e.Seq > want && next != nil && next.err == nil && next.e.Seq < e.Seq:
		return &VerifyError{c.n, ProblemReordered, fmt.Sprintf(
			"seq %d where %d is due, and line %d has seq %d", e.Seq, want, next.n, next.e.Seq)}
	case e.Seq > want:
		return &VerifyError{c.n, ProblemRemoved, fmt.Sprintf(
			"seq %d where %d is due: %d line(s) missing before it", e.Seq, want, e.Seq-want)}
	case last.line > 0 && e.Seq == last.seq && e.Prev == last.prev:
		// Two lines claim the same place; the chain goes on from the genuine one.
		if nextIs(e.Seq+1, c.hash) {
			return &VerifyError{last.line, ProblemInserted, fmt.Sprintf(
				"line %d has the same seq %d and prev, and the chain continues from line %d", c.n, e.Seq, c.n)}
		}
		return &VerifyError{c.n, ProblemInserted, fmt.Sprintf(
			"same seq %d and prev as line %d", e.Seq, last.line)}
	default:
		return &VerifyError{c.n, ProblemReordered, fmt.Sprintf(
			"seq %d where %d is due: out of order", e.Seq, want)}
	}
}

// tornRun follows a run of lines that are not entries without keeping
// them: their count, the first one, and the hash the writer computed over
// their bytes joined by "\n".
type tornRun struct {
	count           int
	first           int // line number
	firstErr        error
	firstLen        int
	firstTerminated bool
	hash            hash.Hash
}

func (t *tornRun) add(ln *logLine) {
	if t.count == 0 {
		t.first, t.firstErr, t.firstLen, t.firstTerminated = ln.n, ln.err, ln.size, ln.terminated
		t.hash = sha256.New()
	} else {
		t.hash.Write([]byte{'\n'})
	}
	t.hash.Write(ln.b)
	t.count++
}

func (t *tornRun) sum() string { return hex.EncodeToString(t.hash.Sum(nil)) }

// logLine is one line of the file, parsed as far as the chain needs.
type logLine struct {
	n          int    // 1-based
	b          []byte // without "\n"; only the first bytes of a line over MaxLogLine
	size       int    // the line's length without "\n"
	hash       string // SHA-256 of the whole line without "\n"
	terminated bool   // ended in "\n"
	e          chainFields
	err        error // why it is not an entry
}

// logLineSource reads lines with one line of lookahead.
type logLineSource struct {
	r      *bufio.Reader
	n      int
	peeked *logLine
	done   bool
	h      hash.Hash
}

func (s *logLineSource) next() (*logLine, error) {
	if s.peeked != nil {
		ln := s.peeked
		s.peeked = nil
		return ln, nil
	}
	return s.read()
}

func (s *logLineSource) peek() (*logLine, error) {
	if s.peeked == nil {
		ln, err := s.read()
		if err != nil {
			return nil, err
		}
		s.peeked = ln
	}
	return s.peeked, nil
}

// oversizePrefix is how much of a line longer than MaxLogLine is kept: its
// chain fields come first.
const oversizePrefix = 256

// readLine reads one line, keeping at most MaxLogLine bytes of it (the
// first oversizePrefix bytes of a longer one) while hashing all of it, so
// that no line, however long, is held in memory.
func (s *logLineSource) readLine() (ln *logLine, err error) {
	if s.h == nil {
		s.h = sha256.New()
	}
	s.h.Reset()
	ln = &logLine{}
	var kept []byte
	for {
		chunk, rerr := s.r.ReadSlice('\n')
		body := chunk
		if rerr == nil {
			body = chunk[:len(chunk)-1]
			ln.terminated = true
		}
		s.h.Write(body)
		ln.size += len(body)
		switch {
		case ln.size <= MaxLogLine:
			kept = append(kept, body...)
		case len(kept) > oversizePrefix:
			kept = kept[:oversizePrefix:oversizePrefix]
		case len(kept) < oversizePrefix:
			kept = append(kept, body[:min(len(body), oversizePrefix-len(kept))]...)
		}
		if errors.Is(rerr, bufio.ErrBufferFull) {
			continue
		}
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return nil, fmt.Errorf("read decision log: %w", rerr)
		}
		if errors.Is(rerr, io.EOF) && ln.size == 0 {
			return nil, io.EOF
		}
		ln.b = kept
		ln.hash = hex.EncodeToString(s.h.Sum(nil))
		return ln, rerr
	}
}

func (s *logLineSource) read() (*logLine, error) {
	if s.done {
		return nil, nil
	}
	ln, err := s.readLine()
	if errors.Is(err, io.EOF) {
		s.done = true
		if ln == nil {
			return nil, nil
		}
	} else if err != nil {
		return nil, err
	}
	s.n++
	ln.n = s.n
	if ln.size > MaxLogLine {
		ln.e, ln.err = parseChainPrefix(ln.b)
		if ln.err != nil {
			ln.err = fmt.Errorf("line of %d bytes, longer than %d, whose first bytes are not an entry's: %w", ln.size, MaxLogLine, ln.err)
		}
	} else {
		ln.e, ln.err = parseChainLine(ln.b)
	}
	return ln, nil
}

// parseChainPrefix reads the chain fields from the start of a line too long
// to parse, in the exact form the writer starts every decision with:
// {"seq":<digits>,"prev":"<64 hex>",
func parseChainPrefix(b []byte) (chainFields, error) {
	var e chainFields
	rest, ok := bytes.CutPrefix(b, []byte(`{"seq":`))
	if !ok {
		return e, errors.New(`it does not start with {"seq":`)
	}
	i := 0
	for i < len(rest) && i < 20 && rest[i] >= '0' && rest[i] <= '9' {
		e.Seq = e.Seq*10 + uint64(rest[i]-'0')
		i++
	}
	if i == 0 || e.Seq == 0 || (rest[0] == '0') {
		return e, errors.New("no seq")
	}
	rest, ok = bytes.CutPrefix(rest[i:], []byte(`,"prev":"`))
	if !ok || len(rest) < 66 || rest[64] != '"' || rest[65] != ',' {
		return e, errors.New("no prev after the seq")
	}
	e.Prev = string(rest[:64])
	if !isHexHash(e.Prev) {
		return e, errors.New("prev is not 64 lower-case hex digits")
	}
	return e, nil
}
