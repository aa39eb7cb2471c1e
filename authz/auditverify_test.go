package authz

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
)

// chainedLines returns the lines (without "\n") of a log of n decisions written
// by DecisionLog.
func chainedLines(t *testing.T, n int) []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "decisions.log")
	writeDecisions(t, path, 0, n)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
}

func joinLogLines(lines []string) string { return strings.Join(lines, "\n") + "\n" }

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestVerifyDecisionLog(t *testing.T) {
	good := chainedLines(t, 10)
	// Line numbers below are 1-based; good[4] is line 5.
	forged := strings.Replace(good[4], `"allowed":true`, `"allowed":false`, 1)
	if forged == good[4] {
		t.Fatalf("line 5 has no allowed:true: %s", good[4])
	}
	tests := []struct {
		name    string
		edit    func(l []string) string
		line    int
		problem Problem
	}{
		{name: "intact", edit: joinLogLines},
		{name: "empty", edit: func([]string) string { return "" }},
		{name: "edit a field of a middle line", line: 5, problem: ProblemEdited,
			edit: func(l []string) string { l[4] = forged; return joinLogLines(l) }},
		{name: "edit the first line's prev", line: 1, problem: ProblemEdited,
			edit: func(l []string) string {
				l[0] = strings.Replace(l[0], zeroChainHash, strings.Repeat("1", 64), 1)
				return joinLogLines(l)
			}},
		{name: "delete a middle line", line: 5, problem: ProblemRemoved,
			edit: func(l []string) string { return joinLogLines(append(l[:4], l[5:]...)) }},
		{name: "delete the first line", line: 1, problem: ProblemRemoved,
			edit: func(l []string) string { return joinLogLines(l[1:]) }},
		{name: "swap two lines", line: 5, problem: ProblemReordered,
			edit: func(l []string) string { l[4], l[5] = l[5], l[4]; return joinLogLines(l) }},
		{name: "move a line back", line: 7, problem: ProblemReordered,
			edit: func(l []string) string {
				return joinLogLines([]string{l[0], l[1], l[2], l[3], l[4], l[5], l[2], l[6], l[7]})
			}},
		{name: "insert a forged line before the genuine one", line: 5, problem: ProblemInserted,
			edit: func(l []string) string {
				return joinLogLines(append(l[:4:4], append([]string{forged}, l[4:]...)...))
			}},
		{name: "insert a forged line after the genuine one", line: 6, problem: ProblemInserted,
			edit: func(l []string) string {
				return joinLogLines(append(l[:5:5], append([]string{forged}, l[5:]...)...))
			}},
		{name: "insert a line with a made-up prev", line: 5, problem: ProblemInserted,
			edit: func(l []string) string {
				fake := strings.Replace(forged, sha256Hex(l[3]), sha256Hex("x"), 1)
				return joinLogLines(append(l[:4:4], append([]string{fake}, l[4:]...)...))
			}},
		{name: "invalid JSON in a middle line", line: 5, problem: ProblemInvalid,
			edit: func(l []string) string { l[4] = l[4][:len(l[4])-1]; return joinLogLines(l) }},
		{name: "empty middle line", line: 5, problem: ProblemInvalid,
			edit: func(l []string) string { return joinLogLines(append(l[:4:4], append([]string{""}, l[4:]...)...)) }},
		{name: "truncate the file mid-line", line: 10, problem: ProblemTruncated,
			edit: func(l []string) string { s := joinLogLines(l); return s[:len(s)-len(l[9])/2] }},
		{name: "chain_restart with no torn bytes", line: 5, problem: ProblemInvalid,
			edit: func(l []string) string {
				l[4] = fmt.Sprintf(`{"seq":5,"prev":"%s","chain_restart":true,"torn":"%s"}`, sha256Hex(l[3]), sha256Hex(""))
				return joinLogLines(l)
			}},
		{name: "torn bytes the marker does not vouch for", line: 5, problem: ProblemInvalid,
			edit: func(l []string) string {
				marker := fmt.Sprintf(`{"seq":5,"prev":"%s","chain_restart":true,"torn":"%s"}`, sha256Hex(l[3]), sha256Hex("other"))
				return joinLogLines(append(l[:4:4], `{"seq":5,"pr`, marker))
			}},
		{name: "torn bytes with their marker", edit: func(l []string) string {
			marker := fmt.Sprintf(`{"seq":5,"prev":"%s","chain_restart":true,"torn":"%s"}`, sha256Hex(l[3]), sha256Hex(`{"seq":5,"pr`))
			return joinLogLines(append(l[:4:4], `{"seq":5,"pr`, marker))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.edit(append([]string(nil), good...))
			// One byte at a time, to check that lines are read whole.
			rep, err := VerifyDecisionLog(iotest.OneByteReader(strings.NewReader(in)))
			if tt.problem == "" {
				if err != nil {
					t.Fatalf("VerifyDecisionLog: %v", err)
				}
				return
			}
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("VerifyDecisionLog = %+v, %v; want a VerifyError", rep, err)
			}
			if ve.Line != tt.line || ve.Problem != tt.problem {
				t.Fatalf("error %q, want line %d: %s", err, tt.line, tt.problem)
			}
			if want := fmt.Sprintf("line %d: %s: ", tt.line, tt.problem); !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("message %q does not start with %q", err, want)
			}
		})
	}
}

func TestVerifyDecisionLogReport(t *testing.T) {
	good := chainedLines(t, 4)
	rep, err := VerifyDecisionLog(strings.NewReader(joinLogLines(good)))
	if err != nil {
		t.Fatal(err)
	}
	want := VerifyReport{Entries: 4, Lines: 4, Seq: 4, Head: sha256Hex(good[3])}
	if fmt.Sprint(rep) != fmt.Sprint(want) {
		t.Fatalf("report = %+v, want %+v", rep, want)
	}
	empty, err := VerifyDecisionLog(strings.NewReader(""))
	if err != nil || empty.Head != zeroChainHash || empty.Entries != 0 {
		t.Fatalf("empty log: %+v, %v", empty, err)
	}

	// The limit of a chain: an edit of the last line verifies, and only the
	// head, compared with one kept elsewhere, shows it.
	good[3] = strings.Replace(good[3], `"node":"n1"`, `"node":"n2"`, 1)
	edited, err := VerifyDecisionLog(strings.NewReader(joinLogLines(good)))
	if err != nil {
		t.Fatal(err)
	}
	if edited.Head == rep.Head {
		t.Fatal("editing the last line did not change the head")
	}
}

func TestVerifyDecisionLogReadError(t *testing.T) {
	r := iotest.TimeoutReader(bytes.NewReader(bytes.Repeat([]byte("x"), 100)))
	_, err := VerifyDecisionLog(r)
	var ve *VerifyError
	if err == nil || errors.As(err, &ve) {
		t.Fatalf("err = %v, want a read error", err)
	}
}

// TestAnEndlessLineIsRefusedNotBuffered: a file of bytes without a newline
// is reported at its first line instead of being read whole into memory.
func TestAnEndlessLineIsRefusedNotBuffered(t *testing.T) {
	r := io.LimitReader(zeroReader{}, 64<<20)
	_, err := VerifyDecisionLog(r)
	var verr *VerifyError
	if !errors.As(err, &verr) || verr.Line != 1 || verr.Problem != ProblemInvalid || !strings.Contains(verr.Detail, "longer than") {
		t.Fatalf("err = %v, want an invalid-line error at line 1", err)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }
