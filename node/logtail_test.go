package node

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var tailT0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// tailLine is a line in the shape the decision log writes.
func tailLine(seq int, pad int) string {
	return fmt.Sprintf(`{"seq":%d,"prev":"%064x","decision_id":"d-%d","time":"%s","x":"%s"}`,
		seq, seq-1, seq, tailT0.Add(time.Duration(seq)*time.Minute).Format(time.RFC3339Nano), strings.Repeat("a", pad))
}

func tailLog(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		b.WriteString(tailLine(i, 10) + "\n")
	}
	return b.String()
}

// naiveTail is the last maxLines whole lines of s, the slow way.
func naiveTail(s string, maxLines int) (start, end int) {
	end = strings.LastIndexByte(s, '\n') + 1
	lines := strings.SplitAfter(s[:end], "\n")
	lines = lines[:len(lines)-1] // SplitAfter's empty last element
	if len(lines) > maxLines {
		start = end - len(strings.Join(lines[len(lines)-maxLines:], ""))
	}
	return start, end
}

func tailOf(t *testing.T, s string, maxLines int, maxBytes int64) logTail {
	t.Helper()
	tail, err := findLogTail(strings.NewReader(s), int64(len(s)), maxLines, maxBytes)
	if err != nil {
		t.Fatal(err)
	}
	return tail
}

func TestFindLogTail(t *testing.T) {
	log := tailLog(5)
	lines := strings.SplitAfter(log, "\n")

	// Fewer lines than asked for: the whole file.
	tail := tailOf(t, log, 10, 1<<20)
	if tail.start != 0 || tail.end != int64(len(log)) || tail.lines != 5 || tail.older != "" ||
		tail.lastStart != int64(len(log)-len(lines[4])) {
		t.Errorf("short file: %+v", tail)
	}
	// Exactly as many: still the whole file, nothing older.
	if tail := tailOf(t, log, 5, 1<<20); tail.start != 0 || tail.lines != 5 || tail.older != "" {
		t.Errorf("exactly 5 lines: %+v", tail)
	}
	// More: the last ones.
	tail = tailOf(t, log, 2, 1<<20)
	if want := int64(len(lines[0]) + len(lines[1]) + len(lines[2])); tail.start != want || tail.lines != 2 || tail.older != "max_lines" {
		t.Errorf("last 2 of 5: %+v, want start %d", tail, want)
	}
	if got := log[tail.start:tail.end]; got != lines[3]+lines[4] {
		t.Errorf("last 2 lines: %q", got)
	}

	// A last line being written is left out, however long.
	for _, partial := range []string{`{"seq":6,"prev":"00`, strings.Repeat("z", 200<<10)} {
		s := log + partial
		tail := tailOf(t, s, 10, 1<<20)
		if tail.end != int64(len(log)) || tail.lines != 5 || tail.start != 0 {
			t.Errorf("with a partial last line of %d bytes: %+v", len(partial), tail)
		}
	}

	// Empty file, and no "\n" at all.
	if tail := tailOf(t, "", 10, 1<<20); tail.start != 0 || tail.end != 0 || tail.lines != 0 {
		t.Errorf("empty file: %+v", tail)
	}
	if tail := tailOf(t, `{"seq":1`, 10, 1<<20); tail.start != 0 || tail.end != 0 || tail.lines != 0 {
		t.Errorf("no whole line: %+v", tail)
	}

	// Huge lines: what is read back is bounded, and a line that begins
	// before the bound is left out whole.
	huge := tailLine(6, 300<<10) + "\n"
	s := log + huge + tailLine(7, 10) + "\n" + tailLine(8, 10) + "\n"
	tail = tailOf(t, s, 10, 100<<10)
	if want := int64(len(log) + len(huge)); tail.start != want || tail.lines != 2 || tail.older != "max_bytes" {
		t.Errorf("huge line past the byte bound: %+v, want start %d", tail, want)
	}
	if tail := tailOf(t, s, 10, 1<<20); tail.start != 0 || tail.lines != 8 || tail.older != "" {
		t.Errorf("huge line within the byte bound: %+v", tail)
	}
	// A last line longer than the bound alone: nothing.
	s = log + huge
	if tail := tailOf(t, s, 10, 100<<10); tail.start != tail.end || tail.lines != 0 || tail.older != "max_bytes" {
		t.Errorf("huge last line: %+v", tail)
	}
	// No "\n" within the bound at all.
	if tail := tailOf(t, log+strings.Repeat("z", 200<<10), 10, 100<<10); tail.start != tail.end || tail.lines != 0 || tail.older != "max_bytes" {
		t.Errorf("no line end within the bound: %+v", tail)
	}

	// Across block boundaries, against the slow way.
	rng := rand.New(rand.NewPCG(1, 2))
	var b strings.Builder
	for i := 1; b.Len() < 5*tailBlock; i++ {
		b.WriteString(tailLine(i, rng.IntN(3000)) + "\n")
	}
	b.WriteString(`{"seq":`) // being written
	big := b.String()
	for _, n := range []int{1, 2, 7, 50, 100, 1000, 1 << 20} {
		tail := tailOf(t, big, n, 1<<30)
		start, end := naiveTail(big, n)
		if tail.start != int64(start) || tail.end != int64(end) {
			t.Errorf("last %d lines: [%d, %d), want [%d, %d)", n, tail.start, tail.end, start, end)
		}
		if got := strings.Count(big[tail.start:tail.end], "\n"); got != tail.lines {
			t.Errorf("last %d lines: counted %d, the range holds %d", n, tail.lines, got)
		}
		if last := big[tail.lastStart:tail.end]; strings.Count(last, "\n") != 1 || !strings.HasPrefix(last, `{"seq":`) {
			t.Errorf("last %d lines: the last line starts at %d: %.40q", n, tail.lastStart, last)
		}
	}
}

func TestTailReader(t *testing.T) {
	read := func(r io.Reader) string {
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	log := tailLog(5)
	lines := strings.SplitAfter(log, "\n")
	tail := tailOf(t, log, 10, 1<<20)
	r, st, err := tailReader(strings.NewReader(log), tail, time.Time{})
	if err != nil || read(r) != log || st.off != 0 || st.head.seq != 1 || !st.head.time.Equal(tailT0.Add(time.Minute)) || st.old+st.nonEntries != 0 {
		t.Fatalf("whole log: %+v %v", st, err)
	}

	// Since: lines before it are left out.
	r, st, _ = tailReader(strings.NewReader(log), tail, tailT0.Add(4*time.Minute))
	if got := read(r); got != lines[3]+lines[4] || st.old != 3 || st.head.seq != 4 {
		t.Errorf("since the 4th line: %+v %q", st, got)
	}
	r, st, _ = tailReader(strings.NewReader(log), tail, tailT0.Add(time.Hour))
	if got := read(r); got != "" || st.old != 5 || st.off != tail.end {
		t.Errorf("since after the last line: %+v %q", st, got)
	}

	// Torn bytes at the start of the range (ended by a restart marker)
	// are left out, so that the replay starts at an entry.
	torn := "\x00\x00\x00\n" + `{"seq":3,"prev":"ab` + "\n"
	s := torn + log
	tail = tailOf(t, s, 10, 1<<20)
	r, st, _ = tailReader(strings.NewReader(s), tail, time.Time{})
	if got := read(r); got != log || st.nonEntries != 2 || st.off != int64(len(torn)) {
		t.Errorf("torn start: %+v %q", st, got)
	}

	// A long line first is passed on from its start, to be counted as
	// oversize by the replay.
	long := `{"seq":1,"prev":"` + strings.Repeat("0", 64) + `","time":"` + tailT0.Format(time.RFC3339) + `","x":"` + strings.Repeat("b", 100<<10) + "\"}\n"
	s = long + log
	tail = tailOf(t, s, 10, 1<<20)
	r, st, _ = tailReader(strings.NewReader(s), tail, time.Time{})
	if got := read(r); got != s || st.head.seq != 1 || st.nonEntries != 0 {
		t.Errorf("long first line: %+v, %d bytes passed on", st, len(got))
	}
}

// TestTailOfALogBeingAppended: lines appended after the tail was measured,
// and a line half written then, are not read.
func TestTailOfALogBeingAppended(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decisions.log")
	log := tailLog(20)
	half := tailLine(21, 10)[:30]
	if err := os.WriteFile(path, []byte(log+half), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, _ := f.Stat()
	tail, err := findLogTail(f, info.Size(), 3, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString(tailLine(21, 10)[30:] + "\n" + tailLine(22, 10) + "\n")
	w.Close()
	r, st, err := tailReader(f, tail, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	want := strings.Join(strings.SplitAfter(log, "\n")[17:20], "")
	if !bytes.Equal(got, []byte(want)) || st.head.seq != 18 {
		t.Errorf("read %q (first seq %d), want lines 18 to 20", got, st.head.seq)
	}
	if h, ok := readLineHead(f, tail.lastStart, tail.end); !ok || h.seq != 20 || !h.time.Equal(tailT0.Add(20*time.Minute)) {
		t.Errorf("last line head %+v %v", h, ok)
	}
}

func TestParseLineHead(t *testing.T) {
	for _, tc := range []struct {
		line string
		seq  uint64
		ok   bool
		time bool
	}{
		{tailLine(12, 3), 12, true, true},
		{`{"seq":3,"prev":"x","chain_restart":true,"torn":"y","time":"2026-03-01T12:00:00Z"}`, 3, true, true},
		{`{"seq":3,"prev":"x","decision_id":"a\"time\":\"2020-01-01T00:00:00Z","time":"2026-03-01T12:00:00Z"}`, 3, true, true},
		{`{"seq":0,"prev":"x"}`, 0, false, false},
		{`{"prev":"x","seq":1}`, 0, false, false},
		{"\x00\x00", 0, false, false},
		{`{"seq":4,"prev":"x"}`, 4, true, false},
	} {
		h, ok := parseLineHead([]byte(tc.line))
		if ok != tc.ok || h.seq != tc.seq || !h.time.IsZero() != tc.time {
			t.Errorf("%.60s: %+v %v", tc.line, h, ok)
		}
		if tc.time && !h.time.Equal(tailT0) && tc.seq != 12 {
			t.Errorf("%.60s: time %v, want %v", tc.line, h.time, tailT0)
		}
	}
}
