package api

import (
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

// Error is the body of every failed request.
type Error struct {
	Status  int                   `json:"-"`
	Code    string                `json:"code"`
	Message string                `json:"message"`
	Errors  []topology.FieldError `json:"errors,omitempty"`
}

func (e *Error) Error() string {
	msg := e.Message
	for _, fe := range e.Errors {
		msg += "\n  " + fe.Error()
	}
	return msg
}

// Error codes.
const (
	CodeBadRequest      = "bad_request"
	CodeBadDocument     = "bad_document"
	CodeInvalidDocument = "invalid_document"
	CodeRejected        = "rejected"
	CodeNotFound        = "not_found"
	CodeUnauthenticated = "unauthenticated"
	CodeForbidden       = "forbidden"
	CodeNoLeader        = "no_leader"
	// CodePartitioned: the member asked is cut off from its cluster's
	// quorum, so the write was not proposed; it keeps enforcing what it
	// last knew. Retry on another member, or later.
	CodePartitioned = "partitioned"
	// CodeDiskFull: the member asked leads and its data dir is full, so
	// the write was not applied (503, Retry-After); it hands its
	// leadership to another member and keeps enforcing what it knows.
	// Retry, through any member.
	CodeDiskFull = "disk_full"
	CodeTimeout  = "timeout"
	CodeInternal = "internal"
	// CodeIncidentExists: the subject already has an unresolved incident,
	// whose ID is the message.
	CodeIncidentExists = "incident_exists"
)

// TopologyResponse is the current document and the revisions it reflects.
type TopologyResponse struct {
	Revision         topology.Revision  `json:"revision"`
	DocumentRevision topology.Revision  `json:"documentRevision"`
	Document         *topology.Document `json:"document"`
}

// WriteResponse acknowledges a committed write.
type WriteResponse struct {
	Revision topology.Revision `json:"revision"`
}

// QuarantineRequest is the body of a quarantine call.
type QuarantineRequest struct {
	Reason string `json:"reason"`
}

// StateRequest is a batch of runtime-state changes applied atomically.
type StateRequest struct {
	Ops []raft.StateOp `json:"ops"`
}

// Subject is a device or gateway with its runtime state.
type Subject struct {
	Revision    topology.Revision      `json:"revision"`
	Kind        topology.Kind          `json:"kind"`
	Name        string                 `json:"name"`
	Zone        string                 `json:"zone"`
	SPIFFEID    string                 `json:"spiffeId"`
	Class       string                 `json:"class,omitempty"`
	Gateway     string                 `json:"gateway,omitempty"`
	Devices     int                    `json:"devices,omitempty"`
	Labels      topology.Labels        `json:"labels,omitempty"`
	Quarantined bool                   `json:"quarantined"`
	State       *topology.SubjectState `json:"state,omitempty"`
}

// LocalQuarantineResponse answers POST .../quarantine?local=true (202): the
// subject as this member now enforces it, and the ID its proposal to the
// cluster carries. Pending until the cluster has committed it.
type LocalQuarantineResponse struct {
	Subject
	LocalID string `json:"localId"`
	Pending bool   `json:"pending"`
}

// JoinRequest asks the cluster to add a member as a voter.
type JoinRequest = raft.Member

// MemberStatus is one member as the node answering a status call sees it,
// with the revision that member itself reports having applied.
type MemberStatus struct {
	raft.MemberStatus
	Reachable    bool              `json:"reachable"`
	Error        string            `json:"error,omitempty"`
	State        string            `json:"state,omitempty"`
	AppliedIndex uint64            `json:"appliedIndex,omitempty"`
	Revision     topology.Revision `json:"revision"`
}

// ClusterStatus is the cluster as seen from one member.
type ClusterStatus struct {
	AnsweredBy string            `json:"answeredBy"`
	LeaderID   string            `json:"leaderId"`
	Term       uint64            `json:"term"`
	Revision   topology.Revision `json:"revision"`
	Members    []MemberStatus    `json:"members"`
}
