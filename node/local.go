package node

import (
	"context"
	"errors"
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
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		pending := n.store.LocalPending()
		if len(pending) == 0 || n.quorum.partitioned() != nil {
			continue
		}
		for _, q := range pending {
			if ctx.Err() != nil {
				return nil
			}
			n.settleLocal(ctx, q)
		}
	}
}

// settleLocal moves one local quarantine on: forgets it once this replica
// has applied it, and otherwise proposes it.
func (n *Node) settleLocal(ctx context.Context, q raft.LocalQuarantine) {
	log := n.cfg.Logger.With("subject", q.Subject.String(), "local_id", q.ID[:16])
	if n.store.LocalApplied(q.ID) {
		if err := n.store.ResolveLocal(q.ID); err != nil {
			log.Error("local quarantine committed, but forgetting it failed; retrying", "err", err)
			return
		}
		log.Info("local quarantine committed by the cluster", "revision", n.store.Current().Revision())
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ops := []raft.StateOp{q.Op()}
	var err error
	if n.store.IsLeader() {
		_, err = n.store.UpdateState(ctx, ops)
	} else {
		id, _ := n.store.Leader()
		m, ok := n.store.Member(id)
		if id == "" || !ok || m.APIAddr == "" {
			return // no leader yet: next tick
		}
		_, err = n.conn.Client(m.APIAddr, n.peer).UpdateState(ctx, ops)
	}
	var apiErr *api.Error
	switch {
	case err == nil:
		log.Info("local quarantine proposed to the cluster")
	case errors.Is(err, raft.ErrRejected) || errors.As(err, &apiErr) && apiErr.Code == api.CodeRejected:
		if strings.Contains(err.Error(), "already used") {
			return // committed before: this replica applies it shortly
		}
		if n.store.Current().Index().Exists(q.Subject) {
			log.Warn("the cluster refused a local quarantine; retrying", "err", err)
			return
		}
		// The subject left the topology meanwhile: nothing to quarantine.
		log.Warn("local quarantine dropped: its subject is no longer in the topology", "err", err)
		if err := n.store.ResolveLocal(q.ID); err != nil {
			log.Error("forgetting a local quarantine failed", "err", err)
		}
	default:
		log.Warn("proposing a local quarantine failed; retrying", "err", err)
	}
}
