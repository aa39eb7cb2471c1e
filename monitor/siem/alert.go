package siem

import (
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"
)

// Alert kinds.
const (
	KindFinding  = "finding"  // one detector's conclusion about one device
	KindIncident = "incident" // what the playbook opened (or changed) for one device
)

// Severities, in increasing order; any other value exports as "unknown".
const (
	SeverityLow      = "low"
	SeverityMedium   = "medium"
	SeverityHigh     = "high"
	SeverityCritical = "critical"
)

// Activities: what happened to the finding or incident an alert is about.
// An empty Activity means ActivityCreate for a finding and, for an
// incident, is derived from its status (see [Alert.activity]).
const (
	ActivityCreate = "create"
	ActivityUpdate = "update"
	ActivityClose  = "close"
)

// Incident statuses as the monitor records them; others export as "Other"
// in OCSF with the status text kept.
const (
	IncidentOpen     = "open"
	IncidentAwaiting = "awaiting"
	IncidentAcked    = "acknowledged"
	IncidentResolved = "resolved"
	IncidentClosed   = "closed"
)

// Alert is one finding or incident as it is exported: a plain value that is
// stored in the outbox as JSON and formatted by each sink.
type Alert struct {
	Kind string `json:"kind"` // KindFinding or KindIncident
	// ID is the finding's or the incident's ID; an incident keeps its ID
	// across updates.
	ID   string    `json:"id"`
	Time time.Time `json:"time"` // when it happened; Enqueue sets it when zero
	// Activity is ActivityCreate, ActivityUpdate or ActivityClose.
	Activity string `json:"activity,omitempty"`

	// The subject.
	Device     string `json:"device,omitempty"`
	DeviceKind string `json:"deviceKind,omitempty"` // device | gateway | service
	SPIFFEID   string `json:"spiffeId,omitempty"`
	Zone       string `json:"zone,omitempty"`
	Class      string `json:"class,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
	Owner      string `json:"owner,omitempty"` // the subject's owner label

	Detector string `json:"detector,omitempty"` // findings: the detector's name
	Severity string `json:"severity"`           // SeverityLow … SeverityCritical
	Risk     int    `json:"risk"`               // the subject's risk, 0–100
	Title    string `json:"title"`
	Message  string `json:"message,omitempty"`
	// Learning marks a finding of a class still in its learning period
	// (it alerts and never acts).
	Learning bool `json:"learning,omitempty"`

	// IncidentID is, for a finding, the incident it belongs to (if any).
	IncidentID     string   `json:"incidentId,omitempty"`
	IncidentStatus string   `json:"incidentStatus,omitempty"`
	Findings       []string `json:"findings,omitempty"` // incidents: the IDs of its findings
	Actions        []string `json:"actions,omitempty"`  // actions taken, e.g. "quarantine"

	Evidence map[string]string `json:"evidence,omitempty"` // what the detector measured
	Labels   map[string]string `json:"labels,omitempty"`   // the subject's labels
}

// ErrInvalidAlert is returned by Enqueue for an alert without a known kind
// or an ID.
var ErrInvalidAlert = errors.New("siem: invalid alert")

func (a *Alert) validate() error {
	switch {
	case a.Kind != KindFinding && a.Kind != KindIncident:
		return fmt.Errorf("%w: kind %q (want %q or %q)", ErrInvalidAlert, a.Kind, KindFinding, KindIncident)
	case a.ID == "":
		return fmt.Errorf("%w: no ID", ErrInvalidAlert)
	}
	switch a.Activity {
	case "", ActivityCreate, ActivityUpdate, ActivityClose:
	default:
		return fmt.Errorf("%w: activity %q", ErrInvalidAlert, a.Activity)
	}
	return nil
}

// activity is the alert's activity: Activity if set; otherwise create for
// a finding, and for an incident close once resolved or closed, create
// while open (or without a status), update otherwise.
func (a *Alert) activity() string {
	if a.Activity != "" {
		return a.Activity
	}
	if a.Kind != KindIncident {
		return ActivityCreate
	}
	switch strings.ToLower(a.IncidentStatus) {
	case "", IncidentOpen:
		return ActivityCreate
	case IncidentResolved, IncidentClosed:
		return ActivityClose
	default:
		return ActivityUpdate
	}
}

// signature is what identifies the alert's type: the detector for a
// finding, "incident" for an incident.
func (a *Alert) signature() string {
	if a.Kind == KindIncident {
		return KindIncident
	}
	if a.Detector != "" {
		return a.Detector
	}
	return a.Kind
}

// name is the alert's one-line title.
func (a *Alert) name() string {
	switch {
	case a.Title != "":
		return a.Title
	case a.Message != "":
		return a.Message
	default:
		return a.signature()
	}
}

// severityRank is 0 for an unknown severity, 1 (low) to 4 (critical).
func severityRank(s string) int {
	switch strings.ToLower(s) {
	case SeverityLow:
		return 1
	case SeverityMedium:
		return 2
	case SeverityHigh:
		return 3
	case SeverityCritical:
		return 4
	default:
		return 0
	}
}

// DefaultVersion is the product version sinks report when none is
// configured: the main module's version from the build information, or
// "dev".
func DefaultVersion() string {
	versionOnce.Do(func() {
		version = "dev"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			version = bi.Main.Version
		}
	})
	return version
}

var (
	versionOnce sync.Once
	version     string
)

// sortedKeys returns m's keys in order.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
