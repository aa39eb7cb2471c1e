package raft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/vigil-iot/vigil/topology"
)

// memSink is a hraft.SnapshotSink over a buffer.
type memSink struct{ bytes.Buffer }

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { return nil }
func (s *memSink) Close() error  { return nil }

func entry(t *testing.T, index uint64, ct commandType, payload any) *hraft.Log {
	t.Helper()
	data, err := encodeCommand(ct, payload)
	if err != nil {
		t.Fatal(err)
	}
	return &hraft.Log{Index: index, Term: 1, Type: hraft.LogCommand, Data: data}
}

// loadedFSM applies a document (in chunks), state and members directly.
func loadedFSM(t *testing.T) *fsm {
	t.Helper()
	f := newFSM(quietLogger())
	s := &Store{cfg: Config{ChunkSize: 300}}
	chunks, err := s.encodeDocument(testDoc(50))
	if err != nil {
		t.Fatal(err)
	}
	idx := uint64(1)
	for _, c := range chunks {
		if r := f.Apply(entry(t, idx, cmdDocumentChunk, c)).(Result); r.Err != nil {
			t.Fatal(r.Err)
		}
		idx++
	}
	at := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	ops := []StateOp{
		quarantineOp("dev-00007", at),
		{Subject: topology.DeviceSubject("dev-00008"), Op: OpSetRisk, Risk: &topology.Risk{Score: 70, UpdatedAt: at,
			Signals: []topology.Signal{{Name: "rate", Score: 70}}}},
		{Subject: topology.GatewaySubject("gw-2"), Op: OpSetAttestation, Attestation: &topology.Attestation{
			Method: "tpm", FirmwareVersion: "1.0", VerifiedAt: at, ExpiresAt: at.Add(time.Hour)}},
	}
	if r := f.Apply(entry(t, idx, cmdState, stateBatch{Ops: ops})).(Result); r.Err != nil {
		t.Fatal(r.Err)
	}
	f.Apply(entry(t, idx+1, cmdMember, Member{ID: "n1", RaftAddr: "127.0.0.1:7000", APIAddr: "127.0.0.1:7070"}))
	// Leave a document half-sent, so pending chunks are part of the image.
	half, _ := s.encodeDocument(testDoc(60))
	f.Apply(entry(t, idx+2, cmdDocumentChunk, half[0]))
	return f
}

func persist(t *testing.T, f *fsm) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	return sink.Bytes()
}

func TestSnapshotRestoreGivesAnEqualState(t *testing.T) {
	orig := loadedFSM(t)
	image := persist(t, orig)

	restored := newFSM(quietLogger())
	sub, _ := restored.hub.subscribe()
	if err := restored.Restore(io.NopCloser(bytes.NewReader(image))); err != nil {
		t.Fatal(err)
	}
	if again := persist(t, restored); !bytes.Equal(image, again) {
		t.Fatal("image of the restored state differs from the original image")
	}
	a, b := orig.current(), restored.current()
	if a.Revision() != b.Revision() || a.DocumentRevision() != b.DocumentRevision() {
		t.Fatalf("revisions differ: %d/%d vs %d/%d", a.Revision(), a.DocumentRevision(), b.Revision(), b.DocumentRevision())
	}
	if !b.Quarantined(topology.DeviceSubject("dev-00007")) || b.SubjectState(topology.DeviceSubject("dev-00008")).Risk.Score != 70 {
		t.Fatal("runtime state was not restored")
	}
	if m := restored.Members()["n1"]; m.APIAddr != "127.0.0.1:7070" {
		t.Fatalf("member n1 = %+v", m)
	}
	ev, err := sub.Next(t.Context())
	if err != nil || !ev.Restored {
		t.Fatalf("restore event = %+v, %v", ev, err)
	}
	if len(restored.pending) != 1 {
		t.Fatalf("%d pending documents restored, want 1", len(restored.pending))
	}
}

func TestRestoreOfAGarbledImageFailsAndKeepsState(t *testing.T) {
	f := loadedFSM(t)
	before := f.current()
	image := persist(t, f)
	for name, img := range map[string][]byte{
		"not gzip":  []byte("hello"),
		"truncated": image[:len(image)/2],
	} {
		if err := f.Restore(io.NopCloser(bytes.NewReader(img))); err == nil {
			t.Errorf("%s: restore succeeded", name)
		}
		if f.current() != before {
			t.Errorf("%s: state changed after a failed restore", name)
		}
	}
}

func TestUndecodableEntriesHaltTheReplica(t *testing.T) {
	good := entry(t, 9, cmdState, stateBatch{})
	flipped := bytes.Clone(good.Data)
	flipped[len(flipped)-2] ^= 0x20
	badJSON := []byte{byte(cmdState), 1, 0, 0, 0, 0, '{', 'x'}
	binary.BigEndian.PutUint32(badJSON[2:6], crc32Castagnoli(badJSON[headerLen:]))
	cases := map[string][]byte{
		"unknown type":     append([]byte{99, 1, 0, 0, 0, 0}, "{}"...),
		"newer version":    append([]byte{byte(cmdState), 7}, good.Data[2:]...),
		"flipped bit":      flipped,
		"short":            {1, 1},
		"payload mismatch": badJSON,
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			f := loadedFSM(t)
			before := f.current()
			defer func() {
				r := recover()
				if r == nil {
					t.Fatal("Apply did not halt on an undecodable entry")
				}
				if msg := fmt.Sprint(r); !strings.Contains(msg, "refusing to diverge") || !strings.Contains(msg, "entry 42") {
					t.Fatalf("panic message %q does not say which entry and why", msg)
				}
				if f.current() != before {
					t.Fatal("state changed before halting")
				}
			}()
			f.Apply(&hraft.Log{Index: 42, Term: 3, Type: hraft.LogCommand, Data: data})
		})
	}
}

func TestPendingDocumentsExpireByLogPosition(t *testing.T) {
	f := newFSM(quietLogger())
	s := &Store{cfg: Config{ChunkSize: 300}}
	for i := range maxPendingDocuments + 2 {
		chunks, _ := s.encodeDocument(testDoc(40 + i))
		f.Apply(entry(t, uint64(i+1), cmdDocumentChunk, chunks[0]))
	}
	if len(f.pending) != maxPendingDocuments {
		t.Fatalf("%d pending documents, want at most %d", len(f.pending), maxPendingDocuments)
	}
	whole := &Store{cfg: Config{ChunkSize: 1 << 20}}
	chunks, _ := whole.encodeDocument(testDoc(1))
	f.Apply(entry(t, pendingWindow+100, cmdDocumentChunk, chunks[0]))
	if len(f.pending) != 0 {
		t.Fatalf("%d stale pending documents kept", len(f.pending))
	}
	if f.current().Index().NumDevices() != 1 {
		t.Fatal("single-chunk document did not apply")
	}
}

func TestMismatchedChunkIsRejected(t *testing.T) {
	f := newFSM(quietLogger())
	s := &Store{cfg: Config{ChunkSize: 300}}
	chunks, _ := s.encodeDocument(testDoc(40))
	f.Apply(entry(t, 1, cmdDocumentChunk, chunks[0]))
	bad := *chunks[1]
	bad.Total++
	r := f.Apply(entry(t, 2, cmdDocumentChunk, &bad)).(Result)
	if r.Err == nil || !strings.Contains(r.Err.Error(), "does not match") {
		t.Fatalf("result = %+v", r)
	}
	if f.current().HasDocument() {
		t.Fatal("a document took effect")
	}
}

// TestInvalidDocumentInTheLogChangesNothing covers a document that reaches
// the log invalid (a leader of another version validated it differently):
// every replica rejects it the same way and keeps its state.
func TestInvalidDocumentInTheLogChangesNothing(t *testing.T) {
	f := loadedFSM(t)
	before := f.current()
	bad := testDoc(5)
	bad.Devices[2].Class = "nope"
	s := &Store{cfg: Config{ChunkSize: 1 << 20}}
	chunks, err := s.encodeDocument(bad)
	if err != nil {
		t.Fatal(err)
	}
	r := f.Apply(entry(t, 100, cmdDocumentChunk, chunks[0])).(Result)
	if !errors.Is(r.Err, topology.ErrInvalid) || !strings.Contains(r.Err.Error(), `devices[2].class: unknown device class "nope"`) {
		t.Fatalf("result error = %v, want the validation error", r.Err)
	}
	if f.current() != before || r.Revision != before.Revision() {
		t.Fatal("an invalid document changed the state")
	}
}

func TestALaggingSubscriberResyncsAndNeverGoesBack(t *testing.T) {
	h := newHub(topology.EmptySnapshot())
	sub, _ := h.subscribe()
	defer sub.Close()
	ix := topology.EmptyIndex()
	for i := range maxQueuedEvents + 10 {
		h.publish(Event{Snapshot: topology.NewSnapshot(topology.Revision(i+1), 0, ix, topology.NewState())})
	}
	ev, err := sub.Next(t.Context())
	if err != nil || !ev.Lagged || !ev.Restored || ev.Snapshot.Revision() != maxQueuedEvents+10 {
		t.Fatalf("first event after lagging: lagged=%v revision=%d err=%v; want the current snapshot", ev.Lagged, ev.Snapshot.Revision(), err)
	}
	h.publish(Event{Snapshot: topology.NewSnapshot(maxQueuedEvents+11, 0, ix, topology.NewState())})
	ev, err = sub.Next(t.Context())
	if err != nil || ev.Lagged || ev.Snapshot.Revision() != maxQueuedEvents+11 {
		t.Fatalf("next event: revision %d lagged=%v err=%v", ev.Snapshot.Revision(), ev.Lagged, err)
	}
}

func TestIncompleteDocumentsAreRejectedNotReportedApplied(t *testing.T) {
	s := &Store{cfg: Config{ChunkSize: 100}}
	chunks, _ := s.encodeDocument(testDoc(40))
	if len(chunks) < 3 {
		t.Fatalf("need at least 3 chunks, have %d", len(chunks))
	}
	last := len(chunks) - 1

	f := newFSM(quietLogger())
	r := f.Apply(entry(t, 1, cmdDocumentChunk, chunks[1])).(Result)
	if !errors.Is(r.Err, ErrRejected) || !strings.Contains(r.Err.Error(), "without its first chunk") {
		t.Fatalf("a chunk without its first: %v", r.Err)
	}

	f = newFSM(quietLogger())
	f.Apply(entry(t, 1, cmdDocumentChunk, chunks[0]))
	r = f.Apply(entry(t, 2, cmdDocumentChunk, chunks[last])).(Result) // the middle ones were lost
	if !errors.Is(r.Err, ErrRejected) || !strings.Contains(r.Err.Error(), "ended with 2 of") {
		t.Fatalf("a transaction ending incomplete: %v", r.Err)
	}
	if f.current().HasDocument() || len(f.pending) != 0 {
		t.Fatal("an incomplete document took effect or stayed pending")
	}
}

// TestNonceOnOtherOperationsIsRefused: a nonce on an operation that takes
// none (here a risk write, as POST /v1/state could send) was accepted by
// the proposer's check and then crashed every replica applying it, for
// good, since the entry stays in the log. Now the proposer refuses it, and
// so does every replica.
func TestNonceOnOtherOperationsIsRefused(t *testing.T) {
	nonce := strings.Repeat("ab", 32)
	op := StateOp{Subject: topology.DeviceSubject("d1"), Op: OpSetRisk, Risk: &topology.Risk{Score: 5},
		Nonce: nonce, NonceExpires: time.Now().Add(time.Hour)}
	if err := checkOps([]StateOp{op}); err == nil || !strings.Contains(err.Error(), "carries no nonce") {
		t.Fatalf("checkOps = %v, want a refusal of the nonce", err)
	}
	if _, err := applyOp(nil, &op); err == nil {
		t.Fatal("applyOp accepted a risk write with a nonce")
	}
	since := time.Now()
	q := StateOp{Subject: topology.DeviceSubject("d1"), Op: OpQuarantine,
		Quarantine: &topology.Quarantine{Reason: "r", Since: since}, Nonce: nonce, NonceExpires: since.Add(LocalQuarantineTTL)}
	if err := checkOps([]StateOp{q}); err != nil {
		t.Fatalf("a quarantine with a nonce (a local quarantine's ID) is refused: %v", err)
	}
	q.NonceExpires = since.Add(100 * 365 * 24 * time.Hour)
	if err := checkOps([]StateOp{q}); err == nil {
		t.Fatal("a local quarantine's ID remembered for a century is accepted")
	}
}
