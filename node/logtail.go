package node

// Reading the recent end of the decision log
//
// A dry run replays the last lines of the member's decision log while the
// log's writer goes on appending to it. The file is never read whole:
// findLogTail walks back from the end in blocks, counting lines, to the
// start of the last N whole lines (or fewer, when the bytes walked reach a
// bound first), and the replay then streams just that byte range. The range
// ends at the last "\n" of the file as it was measured, so a line being
// written (the writer flushes a buffer, which may end mid-line) and lines
// appended later are left out. The log is one file; it is not rotated.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"time"

	"github.com/vigil-iot/vigil/authz"
)

// tailBlock is how much findLogTail reads at a time.
const tailBlock = 64 << 10

// logTail is the range of whole lines a dry run replays.
type logTail struct {
	size       int64 // the file's size when measured
	start, end int64 // [start, end): whole lines, end just after a "\n"
	lines      int   // whole lines in [start, end)
	// older is why the range does not start at the file's start:
	// "max_lines" or "max_bytes" ("" when it does).
	older     string
	lastStart int64 // start of the last line in the range (= end when none)
}

// findLogTail finds the last at most maxLines whole lines of the first size
// bytes of r, reading back from size no more than maxBytes bytes. A line is
// whole when it ends in "\n"; what follows the last "\n" is left out. Lines
// that begin before the maxBytes bound are left out whole.
func findLogTail(r io.ReaderAt, size int64, maxLines int, maxBytes int64) (logTail, error) {
	t := logTail{size: size}
	if size <= 0 {
		return t, nil
	}
	maxLines = max(maxLines, 1)
	buf := make([]byte, tailBlock)
	end := int64(-1)     // just after the last "\n"; -1 until found
	earliest := int64(0) // position of the earliest "\n" found, after end's
	floor := max(size-maxBytes, 0)
	pos := size // [pos, size) has been read
	for pos > floor {
		lo := max(pos-tailBlock, floor)
		b := buf[:pos-lo]
		if _, err := r.ReadAt(b, lo); err != nil && !errors.Is(err, io.EOF) {
			return t, err
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] != '\n' {
				continue
			}
			p := lo + int64(i)
			if end < 0 {
				end, earliest = p+1, p
				continue
			}
			// [p+1, earliest+1) is a whole line.
			if t.lines == 0 {
				t.lastStart = p + 1
			}
			t.lines++
			earliest = p
			if t.lines == maxLines {
				t.start, t.end, t.older = p+1, end, "max_lines"
				return t, nil
			}
		}
		pos = lo
	}
	if end < 0 {
		// No "\n" at all in what was read: no whole line.
		t.start, t.end, t.lastStart = size, size, size
		if floor > 0 {
			t.older = "max_bytes"
		} else {
			t.start, t.end, t.lastStart = 0, 0, 0
		}
		return t, nil
	}
	t.end = end
	if floor > 0 {
		// The line that began before the bound is not whole in what was read.
		t.start, t.older = earliest+1, "max_bytes"
		if t.lines == 0 {
			t.lastStart = t.end
		}
		return t, nil
	}
	// The line from the start of the file to the earliest "\n" is whole.
	if t.lines == 0 {
		t.lastStart = 0
	}
	t.lines++
	t.start = 0
	return t, nil
}

// lineHead is what a dry run reads of a line's first bytes: its seq and
// time, which every line of the log has first (after prev and, for a
// decision, its ID).
type lineHead struct {
	seq  uint64
	time time.Time
}

// headBytes is how much of a line parseLineHead looks at: seq, prev and a
// decision ID clipped to 256 bytes (at most 6 bytes each when escaped)
// come before the time.
const headBytes = 4 << 10

// parseLineHead reads seq and time from the start of a log line. A key
// cannot appear inside a JSON string unescaped, so the first `"time":"` is
// the line's time.
func parseLineHead(b []byte) (lineHead, bool) {
	var h lineHead
	b = b[:min(len(b), headBytes)]
	rest, ok := bytes.CutPrefix(b, []byte(`{"seq":`))
	if !ok {
		return h, false
	}
	i := 0
	for i < len(rest) && i < 20 && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	seq, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	if err != nil || seq == 0 {
		return h, false
	}
	h.seq = seq
	if _, after, ok := bytes.Cut(rest, []byte(`"time":"`)); ok {
		if j := bytes.IndexByte(after, '"'); j > 0 {
			if tm, err := time.Parse(time.RFC3339Nano, string(after[:j])); err == nil {
				h.time = tm
			}
		}
	}
	return h, true
}

// maxLeadingNonEntries bounds the lines at the start of a range skipped for
// not being entries (torn bytes ended by a restart marker); past it the
// replay gets them, and says the file is not a decision log.
const maxLeadingNonEntries = 16

// tailStart is where tailReader starts the replay.
type tailStart struct {
	off        int64    // offset of the first line passed on
	head       lineHead // its seq and time
	old        int      // lines left out for being older than since
	nonEntries int      // lines left out for not being entries
}

// tailReader streams [t.start, t.end) of r, first leaving out lines older
// than since (when not zero) and up to maxLeadingNonEntries lines that are
// not entries, so that the replay starts at an entry.
func tailReader(r io.ReaderAt, t logTail, since time.Time) (io.Reader, tailStart, error) {
	br := bufio.NewReaderSize(io.NewSectionReader(r, t.start, t.end-t.start), 64<<10)
	st := tailStart{off: t.start}
	for st.off < t.end {
		line, size, err := readBoundedLine(br, authz.MaxLogLine+1)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, st, err
		}
		h, entry := parseLineHead(line)
		switch {
		case !since.IsZero() && (h.time.IsZero() || h.time.Before(since)):
			st.old++ // a line without a time before the first recent one too
		case (!entry || size <= authz.MaxLogLine && !json.Valid(line)) && st.nonEntries < maxLeadingNonEntries:
			st.nonEntries++
		default:
			st.head = h
			return io.NewSectionReader(r, st.off, t.end-st.off), st, nil
		}
		st.off += int64(size) + 1 // every line of the range ends in "\n"
		if err != nil {
			break
		}
	}
	st.off = t.end
	return bytes.NewReader(nil), st, nil
}

// readBoundedLine reads one line without its "\n", keeping at most keep
// bytes of it, and returns those bytes and the line's full length.
func readBoundedLine(br *bufio.Reader, keep int) ([]byte, int, error) {
	var kept []byte
	size := 0
	for {
		chunk, err := br.ReadSlice('\n')
		body := chunk
		if err == nil {
			body = chunk[:len(chunk)-1]
		}
		size += len(body)
		if room := keep - len(kept); room > 0 {
			kept = append(kept, body[:min(len(body), room)]...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return kept, size, err
	}
}
