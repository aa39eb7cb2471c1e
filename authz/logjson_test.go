package authz

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

// encodingJSONLine is how decision lines were written before
// appendDecisionEntry, and how the other entries still are.
func encodingJSONLine(t testing.TB, seq uint64, prev string, d *Decision) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(decisionEntry{Seq: seq, Prev: prev, Decision: d}); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

var oddStrings = []string{"", "plain", `quote " and \ backslash`, "<script>&amp;</script>", "tab\tnew\nline\rcr\bbs\fff",
	"\x00\x01\x1f\x7f", "ünïcödé ✓ 🚦", "\u2028 and \u2029", "bad \xff\xfe utf8 \xc3", "spiffe://city.example/zone/north/device/slc-n1-001",
	"/api/v1/telemetry?x=1&y=<2>"}

// TestDecisionLineMatchesEncodingJSON: the hand-written encoder writes
// exactly the bytes encoding/json wrote, so the chain, the verifier and
// every tool that reads the log see no difference.
func TestDecisionLineMatchesEncodingJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 9))
	pick := func() string { return oddStrings[rng.IntN(len(oddStrings))] }
	for i := range 5000 {
		d := &Decision{ID: pick(), Time: time.Unix(rng.Int64N(4e9), rng.Int64N(1e9)).In(time.FixedZone("x", rng.IntN(7200))),
			Node: pick(), Revision: 0, Subject: pick(), Gateway: pick(), Caller: pick(), Source: pick(), Service: pick(),
			Attestation: pick(), Risk: rng.IntN(3) * rng.IntN(101), Method: pick(), Path: pick(), Allowed: rng.IntN(2) == 0,
			HTTPStatus: []int{0, 200, 401, 403, 429}[rng.IntN(5)], Reason: pick(), PolicyHash: pick(), LatencyUS: rng.Int64N(1e6), StaleMS: rng.Int64N(3) * rng.Int64N(1e7)}
		if i%3 == 0 {
			d.Revision = 1 << 40
		}
		seq, prev := rng.Uint64(), pick()
		got, err := appendDecisionEntry(nil, seq, prev, d)
		if err != nil {
			t.Fatal(err)
		}
		if want := encodingJSONLine(t, seq, prev, d); !bytes.Equal(got, want) {
			t.Fatalf("line differs from encoding/json\n got %s\nwant %s", got, want)
		}
	}
}

func FuzzDecisionLine(f *testing.F) {
	for _, s := range oddStrings {
		f.Add(s, s, int64(0), 3)
	}
	f.Fuzz(func(t *testing.T, a, b string, nanos int64, risk int) {
		d := &Decision{ID: a, Time: time.Unix(0, nanos).UTC(), Node: b, Subject: a, Path: b, Reason: a + b, Risk: risk, PolicyHash: b}
		got, err := appendDecisionEntry(nil, 7, a, d)
		if err != nil {
			return
		}
		if want := encodingJSONLine(t, 7, a, d); !bytes.Equal(got, want) {
			t.Fatalf("line differs from encoding/json\n got %q\nwant %q", got, want)
		}
	})
}

func BenchmarkDecisionLine(b *testing.B) {
	d := &Decision{ID: "n1-18c2f3a4-123456", Time: time.Now(), Node: "n1", Revision: 4711,
		Subject: "spiffe://city.example/zone/north/device/slc-n1-001", Gateway: "gw-north-1", Source: "10.0.0.7:51234",
		Service: "telemetry", Method: "POST", Path: "/api/v1/telemetry", Allowed: true, HTTPStatus: 200,
		Reason: `allowed by flow "sensor-telemetry"`, PolicyHash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", LatencyUS: 41}
	prev := "5d41402abc4b2a76b9719d911017c592ae2b3d8cc5bb5a1f1bd2a1c1bb0f3a11"
	b.Run("encoding-json", func(b *testing.B) {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		for b.Loop() {
			buf.Reset()
			enc.Encode(decisionEntry{Seq: 1, Prev: prev, Decision: d})
		}
	})
	b.Run("append", func(b *testing.B) {
		var line []byte
		for b.Loop() {
			line, _ = appendDecisionEntry(line[:0], 1, prev, d)
		}
	})
}
