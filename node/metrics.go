package node

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/topology"
)

// Metrics: GET /metrics on the API address, Prometheus text format. No
// label ever names a device, gateway or service (a city has a million
// of them); causes, results, states and statuses are small fixed sets.
//
// Counters that the parts keep already (decision log, monitor, xDS status)
// are read at scrape time by a collector; only the per-decision counts and
// latencies are observed as they happen, in the authorizer's Observer.

// decisionMetrics counts decisions by result and cause, and their latency.
type decisionMetrics struct {
	counts  [2][authz.CauseOther + 1]atomic.Uint64 // [allowed][cause]
	latency prometheus.Histogram
}

func newDecisionMetrics() *decisionMetrics {
	return &decisionMetrics{latency: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "vigil_authz_decision_duration_seconds",
		Help:    "Time from a Check's arrival to its answer at this member, policy evaluation and the decision log's queue included.",
		Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3},
	})}
}

func (d *decisionMetrics) observe(o *authz.Observation) {
	a := 0
	if o.Allowed {
		a = 1
	}
	if o.Cause <= authz.CauseOther {
		d.counts[a][o.Cause].Add(1)
	}
	d.latency.Observe(time.Since(o.At).Seconds())
}

// memberCollector reads the member's parts at scrape time.
type memberCollector struct {
	n *Node
	d *decisionMetrics

	ready, raftState, term, applied, revision, members, leader *prometheus.Desc
	decisions                                                  *prometheus.Desc
	logWritten, logDropped, logDegraded                        *prometheus.Desc
	proxies, streams, pendingAcks, nacked                      *prometheus.Desc
	monEvents, monDropped, monForwarded, monFindings           *prometheus.Desc
	monSuppressed, monQuarantines, monAtRisk, monPublishFailed *prometheus.Desc
	incidents                                                  *prometheus.Desc
}

func newMemberCollector(n *Node, d *decisionMetrics) *memberCollector {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &memberCollector{n: n, d: d,
		ready:            desc("vigil_member_ready", "1 once this member has caught up with the cluster and decides, else 0."),
		raftState:        desc("vigil_raft_state", "1 for this member's current Raft state (leader, follower, candidate, shutdown).", "state"),
		term:             desc("vigil_raft_term", "This member's current Raft term."),
		applied:          desc("vigil_raft_applied_index", "The last Raft log index this member applied."),
		revision:         desc("vigil_topology_revision", "The topology revision this member serves."),
		members:          desc("vigil_raft_members", "Members in the Raft configuration."),
		leader:           desc("vigil_raft_leader_known", "1 when this member knows a leader, else 0."),
		decisions:        desc("vigil_authz_decisions_total", "ext_authz decisions of this member by result and the cause of a deny.", "result", "cause"),
		logWritten:       desc("vigil_decision_log_written_total", "Decisions written to this member's decision log."),
		logDropped:       desc("vigil_decision_log_dropped_total", "Decisions the decision log could not write (queue full, disk full)."),
		logDegraded:      desc("vigil_decision_log_degraded", "1 while the decision log cannot be written, else 0."),
		proxies:          desc("vigil_xds_proxies_connected", "Proxies (Envoy or gRPC) with an open xDS stream to this member."),
		streams:          desc("vigil_xds_streams", "Open xDS streams on this member."),
		pendingAcks:      desc("vigil_xds_resources_unacked", "Resource types sent to a connected proxy and not acknowledged yet."),
		nacked:           desc("vigil_xds_resources_nacked", "Resource types whose latest version sent a proxy rejected (NACK)."),
		monEvents:        desc("vigil_monitor_events_judged_total", "Events (decisions, access-log entries, attestation results, signals) this member's monitor judged."),
		monDropped:       desc("vigil_monitor_events_dropped_total", "Events the monitor's queues dropped (full)."),
		monForwarded:     desc("vigil_monitor_events_forwarded_total", "Events this member forwarded to the subject's owner."),
		monFindings:      desc("vigil_monitor_findings_total", "Findings this member's detectors raised."),
		monSuppressed:    desc("vigil_monitor_findings_suppressed_total", "Findings suppressed (the same detector, within its quiet period)."),
		monQuarantines:   desc("vigil_monitor_quarantines_total", "Quarantines this member's playbook made."),
		monAtRisk:        desc("vigil_monitor_subjects_at_risk", "Subjects with a risk above 0 that this member owns."),
		monPublishFailed: desc("vigil_monitor_publish_failures_total", "Risk publications through Raft that failed (retried)."),
		incidents:        desc("vigil_incidents", "Incidents in the replicated state by status.", "status"),
	}
}

func (c *memberCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c *memberCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	gauge(c.ready, b(n.Ready()))
	if st, err := n.store.Status(); err == nil {
		for _, s := range []string{"Leader", "Follower", "Candidate", "Shutdown"} {
			gauge(c.raftState, b(st.State == s), lower(s))
		}
		gauge(c.term, float64(st.Term))
		gauge(c.applied, float64(st.AppliedIndex))
		gauge(c.members, float64(len(st.Members)))
		gauge(c.leader, b(st.LeaderID != ""))
	}
	gauge(c.revision, float64(n.store.Current().Revision()))
	// An allow has no cause; a deny always has one.
	counter(c.decisions, c.d.counts[1][authz.CauseNone].Load(), "allow", authz.CauseNone.String())
	for cause := authz.CauseNone + 1; cause <= authz.CauseOther; cause++ {
		counter(c.decisions, c.d.counts[0][cause].Load(), "deny", cause.String())
	}
	ls := n.authz.log.Status()
	counter(c.logWritten, ls.Written)
	counter(c.logDropped, ls.Dropped)
	gauge(c.logDegraded, b(ls.Degraded))
	var connected, streams, unacked, nacked int
	for _, p := range n.xds.server.Status() {
		if p.Connected {
			connected++
		}
		streams += p.Streams
		for _, t := range p.Types {
			if p.Connected && t.Sent != "" && t.Sent != t.Acked {
				unacked++
			}
			if t.Nack != nil && t.Nack.Version == t.Sent {
				nacked++
			}
		}
	}
	gauge(c.proxies, float64(connected))
	gauge(c.streams, float64(streams))
	gauge(c.pendingAcks, float64(unacked))
	gauge(c.nacked, float64(nacked))
	if m := n.monitor; m != nil {
		es := m.eng.Stats()
		counter(c.monEvents, m.ingested.Load())
		counter(c.monDropped, m.dropped.Load())
		counter(c.monForwarded, m.forwarded.Load())
		counter(c.monFindings, es.Findings)
		counter(c.monSuppressed, es.Suppressed)
		counter(c.monQuarantines, m.quarantines.Load())
		gauge(c.monAtRisk, float64(es.AtRisk))
		counter(c.monPublishFailed, m.publishFailed.Load())
	}
	byStatus := map[string]int{topology.IncidentOpen: 0, topology.IncidentAwaiting: 0, topology.IncidentAcked: 0, topology.IncidentResolved: 0}
	for _, inc := range n.store.Incidents() {
		byStatus[inc.Status]++
	}
	for s, v := range byStatus {
		gauge(c.incidents, float64(v), s)
	}
}

func lower(s string) string {
	b := []byte(s)
	if len(b) > 0 && b[0] >= 'A' && b[0] <= 'Z' {
		b[0] += 'a' - 'A'
	}
	return string(b)
}

// metricsHandler is GET /metrics: the member's collector, the decision
// latency histogram, and the Go runtime's and the process's own.
func (n *Node) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newMemberCollector(n, n.decisions), n.decisions.latency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 4})
}
