package raft

import (
	"context"
	"sync"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

// cutOff disconnects member id from every other member, both ways, and
// leaves the others connected to each other: a partition, or a stalled
// process as its peers see it.
func (c *cluster) cutOff(id string) {
	c.trans[id].DisconnectAll()
	for other, ot := range c.trans {
		if other != id {
			ot.Disconnect(hraft.ServerAddress(id))
		}
	}
}

// A leader cut off from its followers keeps believing it leads until its
// lease check runs (LeaderLeaseTimeout, here 2 s); VerifiedLeader says
// false as soon as its last confirmation expires, well before that.
func TestVerifiedLeaderIsFalseOnALeaderCutOff(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 2*time.Second, 2*time.Second, 2*time.Second
	})
	ctx := ctxT(t)
	old := c.leader()
	if !old.VerifiedLeader(ctx) {
		t.Fatal("a healthy leader is not confirmed")
	}
	for id, s := range c.stores {
		if id != old.ID() && s.VerifiedLeader(ctx) {
			t.Fatalf("follower %s is confirmed as the leader", id)
		}
	}
	// Let the confirmation expire, as it does while a process is stopped.
	time.Sleep(old.confirmFor())

	c.cutOff(old.ID())
	cut := time.Now()
	confirmed := old.VerifiedLeader(ctx)
	took := time.Since(cut)
	stillLeader := old.IsLeader()
	if confirmed {
		t.Fatal("a leader cut off from its followers is confirmed")
	}
	if bound := old.confirmFor() + 100*time.Millisecond; took > bound {
		t.Errorf("VerifiedLeader took %v to say false; want at most %v", took, bound)
	}
	if !stillLeader {
		t.Errorf("IsLeader was already false %v after the cut (lease 2s): the test shows nothing", took)
	}
	t.Logf("cut-off leader: VerifiedLeader false after %v, while IsLeader still said %v", took.Round(time.Millisecond), stillLeader)
	if rounds, refused := old.LeadershipChecks(); refused == 0 {
		t.Errorf("LeadershipChecks = %d rounds, %d refused; want a refused round counted", rounds, refused)
	}

	// Every later ask says false too, until it leads again.
	if old.VerifiedLeader(ctx) {
		t.Error("a cut-off leader is confirmed on a second ask")
	}
}

// A leader asked many times, by many goroutines, runs a round of
// heartbeats at most once per confirmation period.
func TestVerifiedLeaderSharesRounds(t *testing.T) {
	c := newCluster(t, 3, nil)
	ctx := ctxT(t)
	leader := c.leader()
	before, _ := leader.LeadershipChecks()
	start := time.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if !leader.VerifiedLeader(ctx) {
					t.Error("a healthy leader is not confirmed")
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	after, refused := leader.LeadershipChecks()
	rounds := after - before
	if max := uint64(elapsed/leader.confirmFor()) + 2; rounds > max {
		t.Errorf("%d rounds for 400 asks over %v; want at most %d (one per %v)", rounds, elapsed, max, leader.confirmFor())
	}
	if refused != 0 {
		t.Errorf("%d rounds of a healthy leader refused", refused)
	}
}

// A member that stepped down, or never led, is not confirmed, and does not
// ask its peers.
func TestVerifiedLeaderOnAFollower(t *testing.T) {
	c := newCluster(t, 3, nil)
	leader := c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for id, s := range c.stores {
		if id == leader.ID() {
			continue
		}
		if s.VerifiedLeader(ctx) {
			t.Errorf("follower %s is confirmed", id)
		}
		if rounds, _ := s.LeadershipChecks(); rounds != 0 {
			t.Errorf("follower %s ran %d rounds", id, rounds)
		}
	}
}
