package node

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/raft"
)

// proposeLocal proposes the member's local quarantines (vigil device
// quarantine --local) to the cluster whenever it is in contact with a
// leader, until its own replica has applied each. A proposal carries the
// quarantine's ID as its nonce, which every replica refuses a second time,
// so retrying after a timeout or a lost answer cannot apply it twice.
func (n *Node) proposeLocal(ctx context.Context) error {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	warned := map[string]string{} // by local ID: the last refusal logged
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if n.quorum.partitioned() != nil {
			continue
		}
		pending := n.store.LocalPending()
		for id := range warned {
			if !slices.ContainsFunc(pending, func(q raft.LocalQuarantine) bool { return q.ID == id }) {
				delete(warned, id)
			}
		}
		for _, q := range pending {
			if ctx.Err() != nil {
				return nil
			}
			if !n.settleLocal(ctx, q, warned) {
				break // the leader is out of reach: the rest wait too
			}
		}
	}
}

// settleLocal moves one local quarantine on: forgets it once this replica
// has applied it, and otherwise proposes it, through this member's own API
// (which forwards to the leader, and refuses while cut off or full). It
// reports false when the proposal did not reach a leader, so that the rest
// wait for the next round. A refusal is logged once per quarantine.
func (n *Node) settleLocal(ctx context.Context, q raft.LocalQuarantine, warned map[string]string) bool {
	log := n.cfg.Logger.With("subject", q.Subject.String(), "local_id", q.ID[:16])
	if n.store.LocalApplied(q.ID) {
		if err := n.store.ResolveLocal(q.ID); err != nil {
			log.Error("local quarantine committed, but forgetting it failed; retrying", "err", err)
			return true
		}
		log.Info("local quarantine committed by the cluster", "revision", n.store.Current().Revision())
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := n.conn.Client(n.apiAddr, n.peer).UpdateState(ctx, []raft.StateOp{q.Op()})
	var apiErr *api.Error
	switch {
	case err == nil:
		log.Info("local quarantine proposed to the cluster")
		return true
	case errors.As(err, &apiErr) && apiErr.Code == api.CodeRejected:
		if strings.Contains(apiErr.Message, "already used") {
			return true // committed before: this replica applies it shortly
		}
		if !n.store.Current().Index().Exists(q.Subject) {
			// The subject left the topology meanwhile: nothing to quarantine.
			log.Warn("local quarantine dropped: its subject is no longer in the topology", "err", err)
			if err := n.store.ResolveLocal(q.ID); err != nil {
				log.Error("forgetting a local quarantine failed", "err", err)
			}
			return true
		}
		if warned[q.ID] != apiErr.Message {
			warned[q.ID] = apiErr.Message
			log.Error("the cluster refuses a local quarantine; it stays in force on this member only, and is proposed again", "err", err)
		}
		return true
	default:
		if warned[q.ID] != err.Error() {
			warned[q.ID] = err.Error()
			log.Warn("proposing a local quarantine failed; retrying", "err", err)
		}
		return false
	}
}
