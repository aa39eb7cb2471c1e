package topology

import "time"

// Finding is one detector's conclusion about one subject: what it saw,
// how bad it is and when. Findings raise the subject's risk and are kept
// with the incidents they led to.
type Finding struct {
	ID       string    `json:"id"`
	Subject  Subject   `json:"subject"`
	Detector string    `json:"detector"`
	Severity string    `json:"severity"` // low | medium | high | critical
	Score    int       `json:"score"`    // risk points when new
	At       time.Time `json:"at"`
	Summary  string    `json:"summary"`
	// Evidence is what the detector measured (observed value, baseline,
	// destination, …), as short strings.
	Evidence map[string]string `json:"evidence,omitempty"`
	// Learning marks a finding of a class still in its learning period:
	// it alerts and never acts.
	Learning bool `json:"learning,omitempty"`
}

// Finding severities, in increasing order.
const (
	SeverityLow      = "low"
	SeverityMedium   = "medium"
	SeverityHigh     = "high"
	SeverityCritical = "critical"
)

// Incident statuses.
const (
	IncidentOpen     = "open"     // actions taken or running; nobody has looked yet
	IncidentAwaiting = "awaiting" // mode approve: restricted, waiting for an operator
	IncidentAcked    = "acknowledged"
	IncidentResolved = "resolved"
)

// Incident is what the playbook opened for one subject: the findings that
// led to it, its risk over time and every action with its outcome.
type Incident struct {
	ID       string    `json:"id"`
	Subject  Subject   `json:"subject"`
	Status   string    `json:"status"`
	Mode     string    `json:"mode"` // auto | approve
	Title    string    `json:"title"`
	OpenedAt time.Time `json:"openedAt"`
	// OpenedBy is the member whose monitor opened it.
	OpenedBy  string      `json:"openedBy"`
	UpdatedAt time.Time   `json:"updatedAt"`
	Risk      int         `json:"risk"`
	Findings  []Finding   `json:"findings"`
	Timeline  []RiskPoint `json:"riskTimeline"`
	Actions   []Action    `json:"actions"`
}

// RiskPoint is the subject's risk at one time.
type RiskPoint struct {
	At    time.Time `json:"at"`
	Score int       `json:"score"`
}

// Action is one step of a playbook or an operator's, with its outcome.
type Action struct {
	At      time.Time `json:"at"`
	Name    string    `json:"name"`    // restrict, quarantine, evidence, alert, notify-owner, approve, ack, resolve, …
	Outcome string    `json:"outcome"` // ok | failed | skipped | waiting
	By      string    `json:"by"`
	Detail  string    `json:"detail,omitempty"`
}

// Action outcomes.
const (
	ActionOK      = "ok"
	ActionFailed  = "failed"
	ActionSkipped = "skipped"
	ActionWaiting = "waiting"
)
