package siem

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzSegment opens an outbox whose only segment (and whose sink's
// acknowledgement file) hold arbitrary bytes: Open never panics nor fails
// on content, keeps only whole records in order, and the outbox then
// works: a new alert is delivered after whatever survived.
func FuzzSegment(f *testing.F) {
	valid := []byte(segMagic)
	for i := 1; i <= 3; i++ {
		valid = appendRecord(valid, uint64(i), []byte(`{"kind":"finding","id":"a-0000`+string(rune('0'+i))+`"}`))
	}
	f.Add(valid, encodeAck(1))
	f.Add(valid, encodeAck(3))
	f.Add(valid[:len(valid)-5], encodeAck(2))
	f.Add(append(bytes.Clone(valid), 0, 0, 0, 9, 1, 2, 3), []byte("junk"))
	f.Add(appendRecord([]byte(segMagic), 7, []byte("not json")), encodeAck(1))
	f.Add(appendRecord([]byte(segMagic), 1<<63, []byte(`{}`)), encodeAck(1<<40))
	f.Add([]byte("VGSIEMS"), []byte{})
	f.Add([]byte{}, encodeAck(5))
	f.Fuzz(func(t *testing.T, segment, ack []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segName(1)), segment, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "ack-mem.pos"), ack, 0o600); err != nil {
			t.Fatal(err)
		}
		sink := &memSink{name: "mem"}
		o, err := Open(dir, []Sink{sink}, fastOptions(nil))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer o.Close()
		last := Alert{Kind: KindIncident, ID: "the-last-one"}
		if err := o.Enqueue(last); err != nil {
			t.Fatal(err)
		}
		running(t, o)
		eventually(t, "the new alert", func() bool {
			got := sink.alerts()
			return len(got) > 0 && got[len(got)-1].ID == last.ID
		})
		// Whatever survived came first, each once.
		got := sink.alerts()
		for _, a := range got[:len(got)-1] {
			if a.ID == last.ID {
				t.Fatalf("the new alert arrived twice: %v", got)
			}
		}
		eventually(t, "nothing queued", func() bool { return o.Stats().Sinks[0].Queued == 0 })
	})
}

// FuzzParseRecord: parseRecord never panics and accepts only what
// appendRecord wrote.
func FuzzParseRecord(f *testing.F) {
	f.Add(appendRecord(nil, 1, []byte(`{"kind":"finding"}`)))
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, payload, n, err := parseRecord(b)
		if err != nil {
			return
		}
		if !bytes.Equal(appendRecord(nil, seq, payload), b[:n]) {
			t.Fatalf("parseRecord accepted a record appendRecord would not write: %x", b[:n])
		}
	})
}
