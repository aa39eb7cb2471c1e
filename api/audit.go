package api

import (
	"net/http"

	"github.com/vigil-iot/vigil/raft"
)

// The decision-log checkpoint endpoints:
//
//	POST /v1/audit/checkpoints          a member records its signed log head (peer token only)
//	GET  /v1/audit/checkpoints?node=ID  a member's recorded checkpoints and audit key

// CheckpointsResponse is what the cluster recorded of a member's decision
// log: its checkpoints, oldest first, each with its signature and the audit
// key that verified it, and the member's current audit key (empty when the
// member is no longer registered or registered none).
type CheckpointsResponse struct {
	Node        string                    `json:"node"`
	AuditKey    string                    `json:"auditKey,omitempty"`
	Checkpoints []raft.RecordedCheckpoint `json:"checkpoints"`
}

// submitCheckpoint records a member's checkpoint. Only members (the peer
// token) may: the state machine checks the member's signature, but
// operators have no business writing the anchors of the audit trail.
func (s *Server) submitCheckpoint(w http.ResponseWriter, r *http.Request, body []byte) error {
	if actorOf(r) != PeerActor {
		return &Error{Status: http.StatusForbidden, Code: CodeForbidden,
			Message: "only cluster members (the peer token) may record decision-log checkpoints"}
	}
	var cp raft.SignedCheckpoint
	if err := decodeStrict(body, &cp); err != nil {
		return err
	}
	rev, err := s.cfg.Store.Checkpoint(r.Context(), cp)
	if err != nil {
		return err
	}
	s.cfg.Logger.Debug("api: decision-log checkpoint recorded", "node", cp.Node, "seq", cp.Seq)
	writeJSON(w, http.StatusOK, WriteResponse{Revision: rev})
	return nil
}

func (s *Server) getCheckpoints(w http.ResponseWriter, r *http.Request) error {
	node := r.URL.Query().Get("node")
	if !raft.ValidMemberID(node) {
		return badRequest("node must name a member (1-63 characters of a-z, 0-9, '-' and '_')")
	}
	m, registered := s.cfg.Store.Member(node)
	cps := s.cfg.Store.Checkpoints(node)
	if !registered && len(cps) == 0 {
		return notFound("no member %q and no checkpoints of one", node)
	}
	if cps == nil {
		cps = []raft.RecordedCheckpoint{}
	}
	writeJSON(w, http.StatusOK, CheckpointsResponse{Node: node, AuditKey: m.AuditKey, Checkpoints: cps})
	return nil
}
