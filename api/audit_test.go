package api

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vigil-iot/vigil/raft"
)

func TestCheckpointEndpoints(t *testing.T) {
	members := startMembers(t, 2)
	ctx := testCtx(t)
	leader, follower := members[0], members[1]
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	reg := raft.Member{ID: "m2", RaftAddr: follower.store.Addr(), APIAddr: follower.srv.Listener.Addr().String(), AuditKey: raft.EncodeAuditKey(pub)}
	if err := leader.store.RegisterMember(ctx, reg); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("a line"))
	cp := raft.SignedCheckpoint{Node: "m2", Seq: 7, Hash: hex.EncodeToString(sum[:]), Time: time.Now()}
	raft.SignCheckpoint(key, &cp)

	// An operator may read checkpoints but not write them.
	_, err := follower.client().SubmitCheckpoint(ctx, cp)
	apiError(t, err, http.StatusForbidden, CodeForbidden)

	// A member writes through any member: the follower forwards it.
	peer := NewClient(follower.srv.URL, PeerToken(clusterKey))
	if _, err := peer.SubmitCheckpoint(ctx, cp); err != nil {
		t.Fatal(err)
	}
	bad := cp
	bad.Seq = 8
	_, err = peer.SubmitCheckpoint(ctx, bad)
	if e := apiError(t, err, http.StatusUnprocessableEntity, CodeRejected); !strings.Contains(e.Message, "does not verify") {
		t.Errorf("bad signature: %s", e.Message)
	}

	got, err := leader.client().Checkpoints(ctx, "m2")
	if err != nil {
		t.Fatal(err)
	}
	if got.Node != "m2" || got.AuditKey != reg.AuditKey || len(got.Checkpoints) != 1 {
		t.Fatalf("checkpoints of m2: %+v", got)
	}
	if c := got.Checkpoints[0]; c.Seq != 7 || c.Signature != cp.Signature || raft.VerifyCheckpoint(got.AuditKey, c.SignedCheckpoint) != nil {
		t.Errorf("checkpoint %+v does not verify under the member's key", c)
	}
	if got, err := leader.client().Checkpoints(ctx, "m1"); err != nil || len(got.Checkpoints) != 0 || got.Checkpoints == nil {
		t.Errorf("a member with no checkpoints: %+v, %v", got, err)
	}
	_, err = leader.client().Checkpoints(ctx, "ghost")
	apiError(t, err, http.StatusNotFound, CodeNotFound)
	_, err = leader.client().Checkpoints(ctx, "")
	apiError(t, err, http.StatusBadRequest, CodeBadRequest)
	_, err = NewClient(leader.srv.URL, "").Checkpoints(ctx, "m2")
	apiError(t, err, http.StatusUnauthorized, CodeUnauthenticated)
}
