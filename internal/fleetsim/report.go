package fleetsim

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// ReportVersion is the version of the Report's JSON shape; fields are
// only ever added within a version.
const ReportVersion = 1

// Report is what a simulation did and how the cluster answered. Its JSON
// form (`vigil sim --json`) is stable: see the fields' tags.
type Report struct {
	Version int       `json:"version"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended"`
	// Mode is "gateway" (requests the gateway's Envoy answers itself never
	// reach ext_authz) or "check-all" (every request is checked).
	Mode    string      `json:"mode"`
	Members []MemberRef `json:"members"`
	Authz   []string    `json:"authz"`
	XDS     []string    `json:"xds"`
	// Devices send; Idle devices have no flow to a service; Gateways front
	// the devices that send.
	Devices  int `json:"devices"`
	Idle     int `json:"idle"`
	Gateways int `json:"gateways"`
	// Attestation is set when the run attested the fleet (--attest).
	Attestation *AttestationReport `json:"attestation,omitempty"`
	// WarmupSeconds is the benign traffic before the first attack.
	WarmupSeconds float64 `json:"warmupSeconds"`
	// Classes and Totals count the benign fleet's requests (attacks are
	// counted in their scenario); Totals.AccessLogs counts every entry
	// sent, attacks included.
	Classes   []ClassTraffic   `json:"classes"`
	Totals    Counts           `json:"totals"`
	Scenarios []ScenarioResult `json:"scenarios"`
	// Quarantines are the devices quarantined since the run started
	// (scenario targets and any other: UnexpectedQuarantines counts
	// those, which a benign fleet should never cause); Incidents the
	// incidents opened since.
	Quarantines           []QuarantineRef `json:"quarantines"`
	UnexpectedQuarantines int             `json:"unexpectedQuarantines"`
	Incidents             []IncidentRef   `json:"incidents"`
	// Errors are the first distinct transport and API errors.
	Errors []string `json:"errors"`
}

// MemberRef is a member the simulator polled.
type MemberRef struct {
	ID  string `json:"id"`
	API string `json:"api"`
}

// Counts are requests of the benign fleet.
type Counts struct {
	// Sent requests; Checked reached ext_authz, which Allowed or Denied;
	// GatewayDenied the gateway answered itself (no route: 403; RBAC of a
	// quarantined device: 403; local rate limit: 429); RateLimited got a
	// 429 from either; Errors failed (no answer from the authorizer).
	Sent          uint64 `json:"sent"`
	Checked       uint64 `json:"checked"`
	Allowed       uint64 `json:"allowed"`
	Denied        uint64 `json:"denied"`
	GatewayDenied uint64 `json:"gatewayDenied"`
	RateLimited   uint64 `json:"rateLimited"`
	Errors        uint64 `json:"errors"`
	// AccessLogs entries were sent; AccessLogsLost were not (a stream
	// down).
	AccessLogs     uint64 `json:"accessLogs,omitempty"`
	AccessLogsLost uint64 `json:"accessLogsLost,omitempty"`
}

// ClassTraffic is one class's benign requests, with the authorizer's
// deny reasons (their gist) counted.
type ClassTraffic struct {
	Class   string `json:"class"`
	Devices int    `json:"devices"`
	Counts
	DenyReasons map[string]uint64 `json:"denyReasons"`
}

// QuarantineRef is a device quarantined during the run.
type QuarantineRef struct {
	Device   string    `json:"device"`
	Since    time.Time `json:"since"`
	By       string    `json:"by"`
	Reason   string    `json:"reason"`
	Scenario string    `json:"scenario,omitempty"` // the scenario it was the target of
}

// IncidentRef is an incident opened during the run.
type IncidentRef struct {
	ID       string `json:"id"`
	Subject  string `json:"subject"` // kind/name
	Status   string `json:"status"`
	Risk     int    `json:"risk"`
	Title    string `json:"title"`
	Scenario string `json:"scenario,omitempty"`
}

// normalize gives every list of the JSON form a value ([] rather than
// null).
func (r *Report) normalize() {
	for _, l := range []*[]string{&r.Authz, &r.XDS, &r.Errors} {
		if *l == nil {
			*l = []string{}
		}
	}
	if r.Members == nil {
		r.Members = []MemberRef{}
	}
	if r.Classes == nil {
		r.Classes = []ClassTraffic{}
	}
	if r.Scenarios == nil {
		r.Scenarios = []ScenarioResult{}
	}
	if r.Quarantines == nil {
		r.Quarantines = []QuarantineRef{}
	}
	if r.Incidents == nil {
		r.Incidents = []IncidentRef{}
	}
}

// OK reports whether the run went as a simulation should: every scenario
// played ended as its target's class expects (one without a suitable
// target is skipped), and nothing else was quarantined.
func (r *Report) OK() bool {
	for _, s := range r.Scenarios {
		if !s.OK && s.Status != StatusSkipped {
			return false
		}
	}
	return r.UnexpectedQuarantines == 0
}

// WriteText writes the report for people.
func (r *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "\nSimulated %s: %d devices behind %d gateways (%s mode)\n", r.Ended.Sub(r.Started).Round(time.Second), r.Devices, r.Gateways, r.Mode)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "CLASS\tDEVICES\tSENT\tCHECKED\tALLOWED\tDENIED\tGATEWAY-DENIED\tRATE-LIMITED\tERRORS\t")
	for _, c := range r.Classes {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", c.Class, c.Devices, c.Sent, c.Checked, c.Allowed, c.Denied, c.GatewayDenied, c.RateLimited, c.Errors)
	}
	t := r.Totals
	fmt.Fprintf(tw, "total\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", r.Devices, t.Sent, t.Checked, t.Allowed, t.Denied, t.GatewayDenied, t.RateLimited, t.Errors)
	tw.Flush()
	fmt.Fprintf(w, "Access log entries sent: %d", t.AccessLogs)
	if t.AccessLogsLost > 0 {
		fmt.Fprintf(w, " (%d lost)", t.AccessLogsLost)
	}
	fmt.Fprintln(w)
	for _, c := range r.Classes {
		for reason, n := range c.DenyReasons {
			fmt.Fprintf(w, "  %s denied %d× : %s\n", c.Class, n, reason)
		}
	}
	if len(r.Scenarios) > 0 {
		fmt.Fprintln(w, "\nScenarios:")
		for _, s := range r.Scenarios {
			mark := "ok  "
			switch {
			case s.Status == StatusSkipped:
				mark = "skip"
			case !s.OK:
				mark = "FAIL"
			}
			fmt.Fprintf(w, "  %s %s\n", mark, s.Line())
			if s.Detail != "" {
				fmt.Fprintf(w, "       %s\n", s.Detail)
			}
			if s.Requests > 0 && s.Scenario != ScenarioReplay && s.Scenario != ScenarioTamper {
				fmt.Fprintf(w, "       %d attack requests: %d checked (%d denied), %d answered by the gateway\n",
					s.Requests, s.Checked, s.Denied, s.GatewayDenied)
			}
			for _, f := range s.Findings {
				learning := ""
				if f.Learning {
					learning = " (learning: no risk)"
				}
				fmt.Fprintf(w, "       finding %s %s +%d%s: %s\n", f.Detector, f.Severity, f.Score, learning, f.Summary)
			}
		}
	}
	switch {
	case len(r.Quarantines) == 0:
		fmt.Fprintln(w, "\nQuarantines during the run: none")
	default:
		fmt.Fprintln(w, "\nQuarantines during the run:")
		for _, q := range r.Quarantines {
			why := "UNEXPECTED"
			if q.Scenario != "" {
				why = "scenario " + q.Scenario
			}
			fmt.Fprintf(w, "  %s since %s (%s): %s\n", q.Device, q.Since.Local().Format(time.TimeOnly), why, q.Reason)
		}
	}
	if len(r.Incidents) > 0 {
		ids := make([]string, len(r.Incidents))
		for i, inc := range r.Incidents {
			ids[i] = inc.ID
		}
		fmt.Fprintf(w, "Incidents opened: %s (vigil incident show ID)\n", strings.Join(ids, ", "))
	}
	if len(r.Errors) > 0 {
		fmt.Fprintln(w, "Errors:")
		for _, e := range r.Errors {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
}
