package spire

import (
	"bytes"
	"log/slog"
	"testing"
)

// TestSkippedEdgesWarnedOnce: a skipped edge is logged when a pass first
// skips it, not on every pass; once served again, a new skip is logged anew.
func TestSkippedEdgesWarnedOnce(t *testing.T) {
	var buf bytes.Buffer
	r, err := NewReconciler(Config{Client: &Client{}, IsLeader: func() bool { return true },
		Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == slog.LevelKey {
				return slog.Attr{}
			}
			return a
		}}))})
	if err != nil {
		t.Fatal(err)
	}
	a, b := "cloud edge mars/e skipped: x", "cloud edge cloud/l-1 skipped: y"
	for _, pass := range [][]string{{a, b}, {a, b}, {a}, {a, b}, nil} {
		r.warnSkipped(pass)
	}
	want := `msg="spire: ` + a + `"` + "\n" + `msg="spire: ` + b + `"` + "\n" + `msg="spire: ` + b + `"` + "\n"
	if got := buf.String(); got != want {
		t.Errorf("log:\n%s\nwant:\n%s", got, want)
	}
}
