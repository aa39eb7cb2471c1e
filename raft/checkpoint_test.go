package raft

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

func auditKey(t *testing.T) (ed25519.PrivateKey, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv, EncodeAuditKey(pub)
}

func lineHash(seq uint64) string {
	sum := sha256.Sum256([]byte(fmt.Sprint("line ", seq)))
	return hex.EncodeToString(sum[:])
}

var cpEpoch = time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC)

func signedCP(key ed25519.PrivateKey, node string, seq uint64, hash string) SignedCheckpoint {
	cp := SignedCheckpoint{Node: node, Seq: seq, Hash: hash, Time: cpEpoch.Add(time.Duration(seq) * time.Second)}
	SignCheckpoint(key, &cp)
	return cp
}

// checkpointFSM is an FSM with member n1 registered under key.
func checkpointFSM(t *testing.T, pub string) *fsm {
	t.Helper()
	f := newFSM(quietLogger())
	if r := f.Apply(entry(t, 1, cmdMember, Member{ID: "n1", RaftAddr: "a", APIAddr: "b", AuditKey: pub})).(Result); r.Err != nil {
		t.Fatal(r.Err)
	}
	f.Apply(entry(t, 2, cmdMember, Member{ID: "n2", RaftAddr: "c", APIAddr: "d"}))
	return f
}

func seqs(l checkpointLog) []uint64 {
	var out []uint64
	for _, c := range l {
		out = append(out, c.Seq)
	}
	return out
}

func TestCheckpointSignedBytes(t *testing.T) {
	got := string(CheckpointSignedBytes("n1", 42, strings.Repeat("ab", 32), time.Unix(1, 5)))
	want := "vigil decision-log checkpoint v1\nn1\n42\n" + strings.Repeat("ab", 32) + "\n1000000005"
	if got != want {
		t.Fatalf("signed bytes:\n%q\nwant\n%q", got, want)
	}
}

func TestCheckpointsAreRecordedOnlyWhenTheyVerifyAndGoForward(t *testing.T) {
	key, pub := auditKey(t)
	other, _ := auditKey(t)
	f := checkpointFSM(t, pub)
	idx := uint64(3)
	apply := func(cp SignedCheckpoint) error {
		t.Helper()
		idx++
		return f.Apply(entry(t, idx, cmdCheckpoint, cp)).(Result).Err
	}
	if err := apply(signedCP(key, "n1", 5, lineHash(5))); err != nil {
		t.Fatalf("a good checkpoint: %v", err)
	}
	tampered := signedCP(key, "n1", 9, lineHash(9))
	tampered.Seq = 10
	for name, tc := range map[string]struct {
		cp   SignedCheckpoint
		want string
	}{
		"another key":        {signedCP(other, "n1", 9, lineHash(9)), "does not verify"},
		"tampered":           {tampered, "does not verify"},
		"garbled signature":  {SignedCheckpoint{Node: "n1", Seq: 9, Hash: lineHash(9), Time: cpEpoch, Signature: "!!"}, "not the base64"},
		"unknown member":     {signedCP(key, "n9", 9, lineHash(9)), "no such member"},
		"member with no key": {signedCP(key, "n2", 9, lineHash(9)), "registered no audit key"},
		"rollback":           {signedCP(key, "n1", 3, lineHash(3)), "goes back from seq 5"},
		"rewritten":          {signedCP(key, "n1", 5, lineHash(55)), "was rewritten"},
		"seq 0":              {signedCP(key, "n1", 0, lineHash(0)), "seq must be from 1"},
		"bad hash":           {signedCP(key, "n1", 9, "ABC"), "64 lower-case hex"},
	} {
		err := apply(tc.cp)
		if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrRejected saying %q", name, err, tc.want)
		}
	}
	if got := seqs(f.checkpoints["n1"]); fmt.Sprint(got) != "[5]" {
		t.Fatalf("after rejections the member has checkpoints %v, want [5]", got)
	}
	if err := apply(signedCP(key, "n1", 5, lineHash(5))); err != nil {
		t.Errorf("the same head again: %v", err)
	}
	if err := apply(signedCP(key, "n1", 8, lineHash(8))); err != nil {
		t.Fatal(err)
	}
	if got := seqs(f.checkpoints["n1"]); fmt.Sprint(got) != "[5 8]" {
		t.Fatalf("checkpoints %v, want [5 8]", got)
	}
	last := f.checkpoints["n1"][1]
	if last.AuditKey != pub || VerifyCheckpoint(last.AuditKey, last.SignedCheckpoint) != nil {
		t.Errorf("recorded checkpoint %+v does not verify under its key", last)
	}

	// A new key (a member whose data dir was replaced) starts again from
	// any seq; the checkpoints under the old key stay.
	key2, pub2 := auditKey(t)
	idx++
	f.Apply(entry(t, idx, cmdMember, Member{ID: "n1", RaftAddr: "a", APIAddr: "b", AuditKey: pub2}))
	if err := apply(signedCP(key, "n1", 9, lineHash(9))); err == nil {
		t.Error("a checkpoint signed with the member's earlier key was recorded")
	}
	if err := apply(signedCP(key2, "n1", 2, lineHash(2))); err != nil {
		t.Fatalf("first checkpoint under a new key: %v", err)
	}
	if got := seqs(f.checkpoints["n1"]); fmt.Sprint(got) != "[5 8 2]" {
		t.Fatalf("checkpoints %v, want [5 8 2]", got)
	}
	// Removing the member keeps its checkpoints: they are evidence.
	idx++
	f.Apply(entry(t, idx, cmdRemoveMember, removeMember{ID: "n1"}))
	if len(f.checkpoints["n1"]) != 3 {
		t.Error("removing the member dropped its checkpoints")
	}
	// A registration with a key that is not one is rejected.
	idx++
	if r := f.Apply(entry(t, idx, cmdMember, Member{ID: "n3", AuditKey: "bm90IGEga2V5"})).(Result); !errors.Is(r.Err, ErrRejected) {
		t.Errorf("member with a bad audit key: %v", r.Err)
	}
}

func TestCheckpointHistoryIsBoundedAndSpreadOut(t *testing.T) {
	key, pub := auditKey(t)
	f := checkpointFSM(t, pub)
	for i := range uint64(1000) {
		if r := f.Apply(entry(t, 3+i, cmdCheckpoint, signedCP(key, "n1", 10*(i+1), lineHash(i)))).(Result); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	l := f.checkpoints["n1"]
	if len(l) != maxCheckpoints {
		t.Fatalf("%d checkpoints kept, want %d", len(l), maxCheckpoints)
	}
	if l[0].Seq != 10 || l[len(l)-1].Seq != 10000 {
		t.Errorf("first and last kept are %d and %d, want 10 and 10000", l[0].Seq, l[len(l)-1].Seq)
	}
	for i := 1; i < len(l); i++ {
		if l[i].Seq <= l[i-1].Seq {
			t.Fatalf("not in order: %v", seqs(l))
		}
		if gap := l[i].Seq - l[i-1].Seq; gap > 10000/maxCheckpoints*4 {
			t.Errorf("gap of %d between %d and %d: the history is not spread over the log", gap, l[i-1].Seq, l[i].Seq)
		}
	}
}

func TestCheckpointsSurviveSnapshotAndRestore(t *testing.T) {
	key, pub := auditKey(t)
	f := loadedFSM(t)
	idx := f.lastIndex
	idx++
	f.Apply(entry(t, idx, cmdMember, Member{ID: "n1", RaftAddr: "127.0.0.1:7000", APIAddr: "127.0.0.1:7070", AuditKey: pub}))
	for _, seq := range []uint64{3, 7} {
		idx++
		if r := f.Apply(entry(t, idx, cmdCheckpoint, signedCP(key, "n1", seq, lineHash(seq)))).(Result); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	image := persist(t, f)
	restored := newFSM(quietLogger())
	if err := restored.Restore(io.NopCloser(bytes.NewReader(image))); err != nil {
		t.Fatal(err)
	}
	if again := persist(t, restored); !bytes.Equal(image, again) {
		t.Fatal("image of the restored state differs from the original image")
	}
	got := restored.checkpoints["n1"]
	if fmt.Sprint(seqs(got)) != "[3 7]" || restored.Members()["n1"].AuditKey != pub {
		t.Fatalf("restored checkpoints %v, member %+v", seqs(got), restored.Members()["n1"])
	}
	if !got[1].Time.Equal(cpEpoch.Add(7*time.Second)) || VerifyCheckpoint(pub, got[1].SignedCheckpoint) != nil {
		t.Errorf("restored checkpoint %+v does not verify", got[1])
	}
	// The restored state goes on enforcing the rules.
	if r := restored.Apply(entry(t, idx+1, cmdCheckpoint, signedCP(key, "n1", 4, lineHash(4)))).(Result); !errors.Is(r.Err, ErrRejected) {
		t.Errorf("rollback after restore: %v", r.Err)
	}
}

// TestStoreCheckpoint goes through a real member: the leader records the
// checkpoint, refuses a malformed one before the log, and keeps what it
// recorded across a restart.
func TestStoreCheckpoint(t *testing.T) {
	c := newCluster(t, 1, nil)
	s := c.leader()
	ctx := ctxT(t)
	key, pub := auditKey(t)
	if err := s.RegisterMember(ctx, Member{ID: "n1", RaftAddr: s.Addr(), APIAddr: "127.0.0.1:1", AuditKey: "short"}); !errors.Is(err, ErrRejected) {
		t.Fatalf("registering a bad audit key: %v", err)
	}
	if err := s.RegisterMember(ctx, Member{ID: "n1", RaftAddr: s.Addr(), APIAddr: "127.0.0.1:1", AuditKey: pub}); err != nil {
		t.Fatal(err)
	}
	cp := SignedCheckpoint{Node: "n1", Seq: 12, Hash: lineHash(12), Time: time.Now()}
	SignCheckpoint(key, &cp)
	if _, err := s.Checkpoint(ctx, cp); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Checkpoint(ctx, SignedCheckpoint{Node: "n1", Seq: 13, Hash: "x", Time: time.Now()}); !errors.Is(err, ErrRejected) {
		t.Errorf("malformed checkpoint: %v", err)
	}
	if _, err := s.Checkpoint(ctx, signedCP(key, "n1", 11, lineHash(11))); !errors.Is(err, ErrRejected) {
		t.Errorf("rollback: %v", err)
	}
	check := func(when string) {
		t.Helper()
		got := s.Checkpoints("n1")
		if len(got) != 1 || got[0].Seq != 12 || !got[0].Time.Equal(cp.Time) || VerifyCheckpoint(got[0].AuditKey, got[0].SignedCheckpoint) != nil {
			t.Fatalf("%s: checkpoints %+v", when, got)
		}
	}
	check("recorded")
	if err := s.Snapshot(); err != nil {
		t.Fatal(err)
	}
	c.stop("n1")
	s = c.start("n1", false)
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Checkpoints("n1")) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	check("after a restart")
}
