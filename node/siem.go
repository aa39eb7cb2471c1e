package node

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/vigil-iot/vigil/monitor/siem"
	"github.com/vigil-iot/vigil/topology"
)

// siemAlerter hands findings and incidents to the SIEM outbox
// (monitor/siem): syslog with CEF, OCSF to a webhook, Alertmanager. The
// outbox syncs each record to disk before it is acknowledged, so alerts
// wait in a bounded queue here and are written in batches, never on the
// monitor's path; a full queue drops and counts.
type siemAlerter struct {
	ob      *siem.Outbox
	ch      chan siem.Alert
	sinks   string
	dropped atomic.Uint64
	failed  atomic.Uint64
}

const alertQueue = 4096

func newAlerter(n *Node) (alerter, error) {
	cfg := n.cfg.Monitor.SIEM
	if !cfg.Enabled() {
		return nil, nil
	}
	cfg.Hostname = n.cfg.ID
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ob, err := siem.NewFromConfig(filepath.Join(n.cfg.DataDir, "siem-outbox"), cfg, n.cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("SIEM outbox: %w", err)
	}
	var names []string
	for _, s := range ob.Stats().Sinks {
		names = append(names, s.Name)
	}
	return &siemAlerter{ob: ob, ch: make(chan siem.Alert, alertQueue), sinks: strings.Join(names, ", ")}, nil
}

func (a *siemAlerter) queue(al siem.Alert) bool {
	select {
	case a.ch <- al:
		return true
	default:
		a.dropped.Add(1)
		return false
	}
}

func (a *siemAlerter) finding(f topology.Finding, in subjectInfo) {
	a.queue(siem.Alert{Kind: siem.KindFinding, ID: f.ID, Time: f.At, Activity: siem.ActivityCreate,
		Device: f.Subject.Name, DeviceKind: f.Subject.Kind.String(), SPIFFEID: in.SPIFFEID, Zone: in.Zone, Class: in.Class,
		Gateway: in.Gateway, Owner: ownerName(in.Owner), Detector: f.Detector, Severity: f.Severity, Title: f.Summary,
		Message: fmt.Sprintf("%s finding on %s: %s", f.Detector, f.Subject, f.Summary), Learning: f.Learning,
		Evidence: f.Evidence, Labels: in.Labels})
}

func (a *siemAlerter) incident(inc topology.Incident, in subjectInfo) string {
	sev := topology.SeverityHigh
	var findings, actions []string
	for _, f := range inc.Findings {
		findings = append(findings, f.ID)
		if f.Severity == topology.SeverityCritical {
			sev = topology.SeverityCritical
		}
	}
	for _, ac := range inc.Actions {
		actions = append(actions, ac.Name+":"+ac.Outcome)
	}
	status := siem.IncidentOpen
	if inc.Status == topology.IncidentAwaiting {
		status = siem.IncidentAwaiting
	}
	ok := a.queue(siem.Alert{Kind: siem.KindIncident, ID: inc.ID, Time: inc.OpenedAt, Activity: siem.ActivityCreate,
		Device: inc.Subject.Name, DeviceKind: inc.Subject.Kind.String(), SPIFFEID: in.SPIFFEID, Zone: in.Zone, Class: in.Class,
		Gateway: in.Gateway, Owner: ownerName(in.Owner), Severity: sev, Risk: inc.Risk, Title: inc.Title,
		Message: fmt.Sprintf("incident %s on %s: %s", inc.ID, inc.Subject, inc.Title), IncidentID: inc.ID,
		IncidentStatus: status, Findings: findings, Actions: actions, Labels: in.Labels})
	if !ok {
		return "the alert queue is full: the alert was dropped (see GET /v1/node monitor.siem)"
	}
	return "queued for " + a.sinks + " (durable outbox, delivered in order)"
}

func (a *siemAlerter) run(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- a.ob.Run(ctx) }()
	for {
		select {
		case <-ctx.Done():
			a.drain()
			a.ob.Close()
			return <-done
		case al := <-a.ch:
			batch := []siem.Alert{al}
		more:
			for len(batch) < 256 {
				select {
				case al := <-a.ch:
					batch = append(batch, al)
				default:
					break more
				}
			}
			if err := a.ob.EnqueueBatch(batch); err != nil {
				a.failed.Add(uint64(len(batch)))
			}
		}
	}
}

// drain writes what is queued before the outbox closes.
func (a *siemAlerter) drain() {
	var batch []siem.Alert
	for {
		select {
		case al := <-a.ch:
			batch = append(batch, al)
		default:
			if len(batch) > 0 {
				if err := a.ob.EnqueueBatch(batch); err != nil {
					a.failed.Add(uint64(len(batch)))
				}
			}
			return
		}
	}
}

func (a *siemAlerter) status() any {
	return map[string]any{"outbox": a.ob.Stats(), "queued": len(a.ch), "dropped": a.dropped.Load(), "notWritten": a.failed.Load()}
}
