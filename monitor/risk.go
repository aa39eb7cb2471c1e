package monitor

import (
	"math"
	"slices"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// maxRiskFindings bounds the findings a subject's risk remembers; the
// weakest (after decay) goes first.
const maxRiskFindings = 8

// riskState is a subject's findings that still count, and what of its risk
// has been published to the cluster.
type riskState struct {
	class     string
	findings  []topology.Finding
	published int
	pubAt     int64 // unix nanoseconds; 0: never
}

func (e *Engine) addRisk(sub topology.Subject, class string, f *topology.Finding) {
	r := e.risks[sub]
	if r == nil {
		r = &riskState{class: class}
		e.risks[sub] = r
	}
	now := f.At.UnixNano()
	r.prune(e, now)
	if len(r.findings) >= maxRiskFindings {
		weakest := 0
		for i := range r.findings {
			if e.decay(r.findings[i].Score, r.findings[i].At.UnixNano(), now) < e.decay(r.findings[weakest].Score, r.findings[weakest].At.UnixNano(), now) {
				weakest = i
			}
		}
		r.findings = slices.Delete(r.findings, weakest, weakest+1)
	}
	r.findings = append(r.findings, *f)
	e.dirty[sub] = struct{}{}
}

// prune drops findings that no longer count.
func (r *riskState) prune(e *Engine, now int64) {
	r.findings = slices.DeleteFunc(r.findings, func(f topology.Finding) bool {
		return now-f.At.UnixNano() > halfLives*int64(e.cfg.HalfLife)
	})
}

func (r *riskState) score(e *Engine, now int64) (int, []topology.Signal) {
	total := 0.0
	sigs := make([]topology.Signal, 0, len(r.findings))
	for _, f := range r.findings {
		v := e.decay(f.Score, f.At.UnixNano(), now)
		total += v
		sigs = append(sigs, topology.Signal{Name: f.Detector, Score: int(math.Round(v)), Detail: f.Summary,
			Severity: f.Severity, At: f.At, Finding: f.ID})
	}
	return min(100, int(math.Round(total))), sigs
}

// Risk is a subject's current risk and the findings behind it.
type Risk struct {
	Subject  topology.Subject
	Class    string
	Score    int
	Signals  []topology.Signal
	Findings []topology.Finding
}

// RiskOf returns the subject's current risk.
func (e *Engine) RiskOf(sub topology.Subject, now time.Time) Risk {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.risks[sub]
	if r == nil {
		return Risk{Subject: sub}
	}
	s, sigs := r.score(e, now.UnixNano())
	return Risk{Subject: sub, Class: r.class, Score: s, Signals: sigs, Findings: slices.Clone(r.findings)}
}

// Publication pacing: a rise is published at once; a fall (decay) once it
// has moved by decayStep points, at most every decayEvery, and 0 always.
const (
	decayStep  = 5
	decayEvery = 30 * time.Second
)

// Pending lists the subjects whose risk should be (re)published: those
// that rose, and, with all, those that decayed far enough. Without all
// only the subjects with new findings since the last call are looked at,
// so that calling it after every finding costs what the findings do, not
// what every subject at risk does. The caller publishes them and reports
// each success with Published.
func (e *Engine) Pending(now time.Time, all bool) []Risk {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := now.UnixNano()
	var out []Risk
	visit := func(sub topology.Subject, r *riskState) {
		r.prune(e, n)
		s, sigs := r.score(e, n)
		switch {
		case s > r.published:
		case s == r.published:
			if s == 0 {
				delete(e.risks, sub) // nothing left to say
			}
			return
		case s == 0 || r.published-s >= decayStep && n-r.pubAt >= int64(decayEvery):
		default:
			return
		}
		out = append(out, Risk{Subject: sub, Class: r.class, Score: s, Signals: sigs})
	}
	if all {
		for sub, r := range e.risks {
			visit(sub, r)
		}
	} else {
		for sub := range e.dirty {
			if r := e.risks[sub]; r != nil {
				visit(sub, r)
			}
		}
	}
	clear(e.dirty)
	slices.SortFunc(out, func(a, b Risk) int { return b.Score - a.Score })
	return out
}

// Published records that sub's risk score was published at now.
func (e *Engine) Published(sub topology.Subject, score int, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if r := e.risks[sub]; r != nil {
		r.published, r.pubAt = score, now.UnixNano()
	}
}

// Seed takes over a subject's replicated risk when this engine holds none
// for it (the member just became its owner, or restarted from an older
// checkpoint): its signals become findings of their severity, seen when
// they were.
func (e *Engine) Seed(sub topology.Subject, class string, risk *topology.Risk) {
	if risk == nil || risk.Score == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.risks[sub]; ok {
		return
	}
	r := &riskState{class: class, published: risk.Score, pubAt: risk.UpdatedAt.UnixNano()}
	for _, s := range risk.Signals {
		at := s.At
		if at.IsZero() {
			at = risk.UpdatedAt
		}
		score := SeverityScore(s.Severity)
		if score == 0 {
			score = s.Score
		}
		r.findings = append(r.findings, topology.Finding{ID: s.Finding, Subject: sub, Detector: s.Name,
			Severity: s.Severity, Score: score, At: at, Summary: s.Detail})
	}
	if len(r.findings) > maxRiskFindings {
		r.findings = r.findings[len(r.findings)-maxRiskFindings:]
	}
	e.risks[sub] = r
}

// Forget drops what the engine holds about a subject: it was released
// by an operator (its risk starts again from zero) or left the topology.
func (e *Engine) Forget(sub topology.Subject) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.risks, sub)
	if d := e.devs[sub]; d != nil {
		d.quiet, d.quietSv, d.firing = [numDetectors]uint32{}, [numDetectors]uint8{}, 0
	}
}

// Retain drops the subjects for which keep is false (gone from the
// topology, or now owned by another member).
func (e *Engine) Retain(keep func(topology.Subject) bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for s := range e.devs {
		if !keep(s) {
			delete(e.devs, s)
		}
	}
	for s := range e.risks {
		if !keep(s) {
			delete(e.risks, s)
		}
	}
}
