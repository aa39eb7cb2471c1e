package raft

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// Incidents
//
// The monitor's playbook opens an incident per subject and appends every
// action it takes; operators acknowledge, approve and resolve them. All of
// it goes through the log (cmdIncident), so every member shows the same
// incidents and a member that takes over a subject sees what was done.
//
// A subject has at most one unresolved incident: opening a second one is
// rejected (IncidentExistsError names the first), which is what makes the
// playbook run once per subject even when two owners race after a
// membership change. Values are immutable once stored: an update replaces
// the incident with a changed copy.

// Bounds on what one incident and the set of incidents hold.
const (
	maxIncidents        = 10_000 // resolved ones beyond this are forgotten, oldest first
	maxIncidentFindings = 64
	maxIncidentActions  = 256
	maxIncidentTimeline = 256
	maxIncidentText     = 2048
)

// IncidentUpdate changes one incident: it appends findings, risk points
// and actions, and moves its status. With From set, it applies only if the
// incident's status is one of From (an approval races a resolve).
type IncidentUpdate struct {
	ID       string               `json:"id"`
	Status   string               `json:"status,omitempty"`
	From     []string             `json:"from,omitempty"`
	Risk     int                  `json:"risk,omitempty"`
	Findings []topology.Finding   `json:"findings,omitempty"`
	Timeline []topology.RiskPoint `json:"timeline,omitempty"`
	Actions  []topology.Action    `json:"actions,omitempty"`
	At       time.Time            `json:"at"`
}

type incidentCmd struct {
	Open   *topology.Incident `json:"open,omitempty"`
	Update *IncidentUpdate    `json:"update,omitempty"`
}

// IncidentExistsError is the rejection of an incident for a subject that
// already has an unresolved one.
type IncidentExistsError struct{ ID string }

func (e *IncidentExistsError) Error() string {
	return fmt.Sprintf("%v: the subject already has unresolved incident %s", ErrRejected, e.ID)
}

func (e *IncidentExistsError) Unwrap() error { return ErrRejected }

// incidents is the state machine's set of incidents.
type incidents struct {
	byID   map[string]*topology.Incident
	open   map[topology.Subject]string // unresolved incident per subject
	orders []string                    // IDs in the order opened
}

func newIncidents() *incidents {
	return &incidents{byID: map[string]*topology.Incident{}, open: map[topology.Subject]string{}}
}

var incidentStatuses = []string{topology.IncidentOpen, topology.IncidentAwaiting, topology.IncidentAcked, topology.IncidentResolved}

// transitions lists the statuses each status may move to.
var transitions = map[string][]string{
	topology.IncidentOpen:     {topology.IncidentAcked, topology.IncidentResolved},
	topology.IncidentAwaiting: {topology.IncidentOpen, topology.IncidentAcked, topology.IncidentResolved},
	topology.IncidentAcked:    {topology.IncidentResolved},
	topology.IncidentResolved: {},
}

func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func checkText(what, s string) error {
	if len(s) > maxIncidentText {
		return fmt.Errorf("%s is longer than %d bytes", what, maxIncidentText)
	}
	return nil
}

func checkActions(as []topology.Action) error {
	for i, a := range as {
		if a.Name == "" || a.At.IsZero() {
			return fmt.Errorf("actions[%d] needs a name and a time", i)
		}
		switch a.Outcome {
		case topology.ActionOK, topology.ActionFailed, topology.ActionSkipped, topology.ActionWaiting:
		default:
			return fmt.Errorf("actions[%d]: outcome %q (want ok, failed, skipped or waiting)", i, a.Outcome)
		}
		if err := checkText(fmt.Sprintf("actions[%d].detail", i), a.Detail); err != nil {
			return err
		}
	}
	return nil
}

// checkIncident validates an incident to open, before it is proposed and
// when it is applied.
func checkIncident(inc *topology.Incident) error {
	switch {
	case !validID(inc.ID):
		return fmt.Errorf("incident id %q must be 1-64 characters of a-z, 0-9 and '-'", inc.ID)
	case inc.Subject.Kind != topology.KindDevice && inc.Subject.Kind != topology.KindGateway:
		return fmt.Errorf("incident %s: subject must be a device or gateway", inc.ID)
	case inc.Status != topology.IncidentOpen && inc.Status != topology.IncidentAwaiting:
		return fmt.Errorf("incident %s opens as open or awaiting, not %q", inc.ID, inc.Status)
	case inc.Mode != "auto" && inc.Mode != "approve":
		return fmt.Errorf("incident %s: mode %q (want auto or approve)", inc.ID, inc.Mode)
	case inc.OpenedAt.IsZero():
		return fmt.Errorf("incident %s needs an opening time", inc.ID)
	case inc.Risk < 0 || inc.Risk > 100:
		return fmt.Errorf("incident %s: risk %d is not 0-100", inc.ID, inc.Risk)
	case len(inc.Findings) > maxIncidentFindings || len(inc.Actions) > maxIncidentActions || len(inc.Timeline) > maxIncidentTimeline:
		return fmt.Errorf("incident %s holds too many findings, actions or risk points", inc.ID)
	}
	if err := checkText("title", inc.Title); err != nil {
		return err
	}
	return checkActions(inc.Actions)
}

func checkUpdate(u *IncidentUpdate) error {
	if !validID(u.ID) {
		return fmt.Errorf("incident id %q is not valid", u.ID)
	}
	if u.At.IsZero() {
		return fmt.Errorf("incident %s: an update needs a time", u.ID)
	}
	if u.Status != "" && !slices.Contains(incidentStatuses, u.Status) {
		return fmt.Errorf("incident %s: unknown status %q", u.ID, u.Status)
	}
	if u.Risk < 0 || u.Risk > 100 {
		return fmt.Errorf("incident %s: risk %d is not 0-100", u.ID, u.Risk)
	}
	if len(u.Findings) > maxIncidentFindings || len(u.Actions) > maxIncidentActions || len(u.Timeline) > maxIncidentTimeline {
		return fmt.Errorf("incident %s: an update holds too many findings, actions or risk points", u.ID)
	}
	return checkActions(u.Actions)
}

// keepLast appends add to have and keeps the last n.
func keepLast[T any](have, add []T, n int) []T {
	out := append(slices.Clip(have), add...)
	if len(out) > n {
		out = slices.Clone(out[len(out)-n:])
	}
	return out
}

func (f *fsm) applyIncident(c *incidentCmd) Result {
	cur := f.current()
	rev := cur.Revision()
	switch {
	case c.Open != nil:
		inc := *c.Open
		if err := checkIncident(&inc); err != nil {
			return rejected(rev, "%v", err)
		}
		if !cur.Index().Exists(inc.Subject) {
			return rejected(rev, "incident %s: unknown %s", inc.ID, inc.Subject)
		}
		if _, dup := f.incidents.byID[inc.ID]; dup {
			return rejected(rev, "incident %s already exists", inc.ID)
		}
		if id, ok := f.incidents.open[inc.Subject]; ok {
			return Result{Revision: rev, Err: &IncidentExistsError{ID: id}}
		}
		inc.UpdatedAt = inc.OpenedAt
		f.incidents.byID[inc.ID] = &inc
		f.incidents.open[inc.Subject] = inc.ID
		f.incidents.orders = append(f.incidents.orders, inc.ID)
		f.incidents.trim()
		return Result{Revision: rev}
	case c.Update != nil:
		u := c.Update
		if err := checkUpdate(u); err != nil {
			return rejected(rev, "%v", err)
		}
		old, ok := f.incidents.byID[u.ID]
		if !ok {
			return rejected(rev, "no incident %s", u.ID)
		}
		if len(u.From) > 0 && !slices.Contains(u.From, old.Status) {
			return rejected(rev, "incident %s is %s, not %s", u.ID, old.Status, strings.Join(u.From, " or "))
		}
		inc := *old
		if u.Status != "" && u.Status != old.Status {
			if !slices.Contains(transitions[old.Status], u.Status) {
				return rejected(rev, "incident %s cannot go from %s to %s", u.ID, old.Status, u.Status)
			}
			inc.Status = u.Status
		}
		if u.Risk > 0 {
			inc.Risk = u.Risk
		}
		inc.Findings = keepLast(inc.Findings, u.Findings, maxIncidentFindings)
		inc.Timeline = keepLast(inc.Timeline, u.Timeline, maxIncidentTimeline)
		inc.Actions = keepLast(inc.Actions, u.Actions, maxIncidentActions)
		inc.UpdatedAt = u.At
		f.incidents.byID[u.ID] = &inc
		if inc.Status == topology.IncidentResolved && f.incidents.open[inc.Subject] == inc.ID {
			delete(f.incidents.open, inc.Subject)
		}
		f.incidents.trim()
		return Result{Revision: rev}
	}
	return rejected(rev, "an incident command needs open or update")
}

// trim forgets the oldest resolved incidents beyond maxIncidents.
func (in *incidents) trim() {
	if len(in.byID) <= maxIncidents {
		return
	}
	keep := in.orders[:0:0]
	excess := len(in.byID) - maxIncidents
	for _, id := range in.orders {
		if excess > 0 && in.byID[id].Status == topology.IncidentResolved {
			delete(in.byID, id)
			excess--
			continue
		}
		keep = append(keep, id)
	}
	in.orders = keep
}

func (in *incidents) image() []*topology.Incident {
	out := make([]*topology.Incident, 0, len(in.orders))
	for _, id := range in.orders {
		out = append(out, in.byID[id])
	}
	return out
}

func restoreIncidents(img []*topology.Incident) *incidents {
	in := newIncidents()
	for _, inc := range img {
		if inc == nil {
			continue
		}
		in.byID[inc.ID] = inc
		in.orders = append(in.orders, inc.ID)
		if inc.Status != topology.IncidentResolved {
			in.open[inc.Subject] = inc.ID
		}
	}
	return in
}

// OpenIncident records a new incident. It must be called on the leader. A
// subject with an unresolved incident gets an *IncidentExistsError.
func (s *Store) OpenIncident(ctx context.Context, inc topology.Incident) (topology.Revision, error) {
	if err := checkIncident(&inc); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrRejected, err)
	}
	return s.apply(ctx, cmdIncident, incidentCmd{Open: &inc})
}

// UpdateIncident applies an update to an incident. It must be called on
// the leader.
func (s *Store) UpdateIncident(ctx context.Context, u IncidentUpdate) (topology.Revision, error) {
	if err := checkUpdate(&u); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrRejected, err)
	}
	return s.apply(ctx, cmdIncident, incidentCmd{Update: &u})
}

// Incidents returns the incidents this replica holds, newest first.
func (s *Store) Incidents() []topology.Incident {
	s.fsm.mu.Lock()
	defer s.fsm.mu.Unlock()
	in := s.fsm.incidents
	out := make([]topology.Incident, 0, len(in.orders))
	for i := len(in.orders) - 1; i >= 0; i-- {
		out = append(out, *in.byID[in.orders[i]])
	}
	return out
}

// Incident returns one incident.
func (s *Store) Incident(id string) (topology.Incident, bool) {
	s.fsm.mu.Lock()
	defer s.fsm.mu.Unlock()
	inc, ok := s.fsm.incidents.byID[id]
	if !ok {
		return topology.Incident{}, false
	}
	return *inc, true
}

// OpenIncidentOf returns the subject's unresolved incident, if any.
func (s *Store) OpenIncidentOf(sub topology.Subject) (topology.Incident, bool) {
	s.fsm.mu.Lock()
	defer s.fsm.mu.Unlock()
	id, ok := s.fsm.incidents.open[sub]
	if !ok {
		return topology.Incident{}, false
	}
	return *s.fsm.incidents.byID[id], true
}
