package node

import (
	"net/http"
	"sync/atomic"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vigil-iot/vigil/attest"
	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/topology"
)

// Metrics: GET /metrics on the API address, Prometheus text format. No
// label ever names a device, gateway or service (a city has a million
// of them); causes, results, states and statuses are small fixed sets.
//
// Counters that the parts keep already (decision log, monitor, xDS status,
// Raft leader changes, the SPIRE reconciler's passes and lag) are read at
// scrape time by a collector. What must be seen as it happens goes through
// plain hooks the parts call, so that raft/ and xds/ stay free of
// Prometheus: the authorizer's Observer (per-decision counts and latency),
// xds.Config.OnPush and OnAnswer (pushes, ACKs, NACKs, push latency),
// raft.Observer (commit and apply latency); the attestor, in this package,
// observes its own.

// decisionMetrics counts decisions by result and cause, and their latency.
type decisionMetrics struct {
	counts  [2][authz.NumCauses]atomic.Uint64 // [allowed][cause]
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
	if o.Cause < authz.NumCauses {
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
	diskFree, diskFull                                         *prometheus.Desc
	proxies, streams, pendingAcks, nacked                      *prometheus.Desc
	monEvents, monDropped, monForwarded, monFindings           *prometheus.Desc
	monSuppressed, monQuarantines, monAtRisk, monPublishFailed *prometheus.Desc
	incidents, leaderChanges                                   *prometheus.Desc
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
		diskFree:         desc("vigil_data_dir_free_bytes", "Bytes free to this member on its data dir's file system, as last sampled (every second)."),
		diskFull:         desc("vigil_data_dir_full", "1 while this member's data dir is full (under 16 MiB free, or a write failed for lack of space): it takes no writes and hands its leadership over, else 0."),
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
		leaderChanges:    desc("vigil_raft_leader_changes_total", "Raft leaders this member has learned of since it started: a new leader, or the same one in a new term (elections)."),
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
	counter(c.leaderChanges, n.store.LeaderChanges())
	gauge(c.revision, float64(n.store.Current().Revision()))
	// An allow has no cause; a deny always has one.
	counter(c.decisions, c.d.counts[1][authz.CauseNone].Load(), "allow", authz.CauseNone.String())
	for cause := authz.CauseNone + 1; cause < authz.NumCauses; cause++ {
		counter(c.decisions, c.d.counts[0][cause].Load(), "deny", cause.String())
	}
	ls := n.authz.log.Status()
	counter(c.logWritten, ls.Written)
	counter(c.logDropped, ls.Dropped)
	gauge(c.logDegraded, b(ls.Degraded))
	full, free, known := n.disk.state()
	gauge(c.diskFull, b(full))
	if known {
		gauge(c.diskFree, float64(free))
	}
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

// xdsTypes are the resource types the xDS metrics name; any other type
// URL a proxy asks for is "other".
var xdsTypes = [...]struct{ url, label string }{
	{resourcev3.ListenerType, "lds"}, {resourcev3.RouteType, "rds"},
	{resourcev3.ClusterType, "cds"}, {resourcev3.EndpointType, "eds"}, {"", "other"},
}

// xdsMetrics counts the xDS server's pushes and the proxies' answers, and
// times the ACKs, by resource type (xds.Config.OnPush and OnAnswer). This
// runs for every response to every proxy: the series are resolved once.
type xdsMetrics struct {
	pushes, acks, nacks   *prometheus.CounterVec
	latency               *prometheus.HistogramVec
	pushed, acked, nacked [len(xdsTypes)]prometheus.Counter
	ackLatency            [len(xdsTypes)]prometheus.Observer
}

func newXDSMetrics() *xdsMetrics {
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"type"})
	}
	m := &xdsMetrics{
		pushes: counter("vigil_xds_pushes_total", "xDS responses this member sent to proxies, by resource type (lds, rds, cds, eds, other)."),
		acks:   counter("vigil_xds_acks_total", "xDS responses a proxy accepted (ACK), by resource type."),
		nacks:  counter("vigil_xds_nacks_total", "xDS responses a proxy rejected (NACK), by resource type."),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vigil_xds_push_duration_seconds",
			Help:    "Time from this member sending a proxy an xDS response until the proxy ACKed it, by resource type (NACKs, and responses superseded before an answer, are not timed).",
			Buckets: []float64{1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10, 30},
		}, []string{"type"}),
	}
	for i, t := range xdsTypes {
		m.pushed[i] = m.pushes.WithLabelValues(t.label)
		m.acked[i] = m.acks.WithLabelValues(t.label)
		m.nacked[i] = m.nacks.WithLabelValues(t.label)
		m.ackLatency[i] = m.latency.WithLabelValues(t.label)
	}
	return m
}

func xdsType(url string) int {
	for i, t := range xdsTypes[:len(xdsTypes)-1] {
		if t.url == url {
			return i
		}
	}
	return len(xdsTypes) - 1
}

func (m *xdsMetrics) push(typeURL string) { m.pushed[xdsType(typeURL)].Inc() }

func (m *xdsMetrics) answer(typeURL string, latency time.Duration, nack bool) {
	i := xdsType(typeURL)
	if nack {
		m.nacked[i].Inc()
		return
	}
	m.acked[i].Inc()
	m.ackLatency[i].Observe(latency.Seconds())
}

func (m *xdsMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.pushes, m.acks, m.nacks, m.latency}
}

// raftMetrics times the store's commits and applies (raft.Observer).
type raftMetrics struct {
	commit, apply prometheus.Histogram
}

func newRaftMetrics() *raftMetrics {
	return &raftMetrics{
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_raft_commit_duration_seconds",
			Help:    "Time from this member proposing a write as leader (document chunk, runtime state, incident, checkpoint, membership) until a quorum committed it and it was applied here.",
			Buckets: []float64{500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10},
		}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vigil_raft_apply_duration_seconds",
			Help:    "Time this member's state machine took to apply one committed Raft log entry (the last chunk of a document indexes all of it).",
			Buckets: []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1, 2.5, 10},
		}),
	}
}

func (m *raftMetrics) observer() raft.Observer {
	return raft.Observer{
		Committed: func(d time.Duration) { m.commit.Observe(d.Seconds()) },
		Applied:   func(d time.Duration) { m.apply.Observe(d.Seconds()) },
	}
}

// attestFormats are the evidence formats the attestation metrics name.
var attestFormats = [...]string{topology.AttestTPM2Quote, topology.AttestDICE, topology.AttestEAT}

// attestMetrics counts the attestation results this member verified and
// recorded, the replays it refused, and times verification. A nil
// *attestMetrics counts nothing.
type attestMetrics struct {
	results *prometheus.CounterVec
	replays prometheus.Counter
	verify  *prometheus.HistogramVec
}

func newAttestMetrics() *attestMetrics {
	m := &attestMetrics{
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_attestation_results_total",
			Help: "Attestation results this member verified and recorded through Raft, by status (passed, failed) and evidence format (tpm2-quote, dice, eat).",
		}, []string{"status", "format"}),
		replays: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_attestation_replays_refused_total",
			Help: "Attestation evidence refused because its nonce was already used (a replay).",
		}),
		verify: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vigil_attestation_verify_duration_seconds",
			Help:    "Time this member took to verify one piece of attestation evidence (signatures, certificate chains, reference values), by evidence format.",
			Buckets: []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1},
		}, []string{"format"}),
	}
	for _, f := range attestFormats {
		m.verify.WithLabelValues(f)
		for _, st := range []string{attest.StatusPassed, attest.StatusFailed} {
			m.results.WithLabelValues(st, f)
		}
	}
	return m
}

// attestFormat keeps the format label a fixed set: ParseEvidence admits
// only the known formats, anything else would be "other".
func attestFormat(f string) string {
	for _, known := range attestFormats {
		if f == known {
			return f
		}
	}
	return "other"
}

func (m *attestMetrics) verified(format string, d time.Duration) {
	if m != nil {
		m.verify.WithLabelValues(attestFormat(format)).Observe(d.Seconds())
	}
}

func (m *attestMetrics) recorded(res attest.Result) {
	if m != nil {
		status := attest.StatusFailed
		if res.Passed() {
			status = attest.StatusPassed
		}
		m.results.WithLabelValues(status, attestFormat(res.Format)).Inc()
	}
}

func (m *attestMetrics) replayed() {
	if m != nil {
		m.replays.Inc()
	}
}

func (m *attestMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.results, m.replays, m.verify}
}

// spireCollector reads the SPIRE reconciler's totals and lag at scrape
// time; it is registered only when the integration is on.
type spireCollector struct {
	rec                          *spire.Reconciler
	passes, errors, lag, desired *prometheus.Desc
}

func newSPIRECollector(rec *spire.Reconciler) *spireCollector {
	return &spireCollector{rec: rec,
		passes: prometheus.NewDesc("vigil_spire_reconcile_passes_total",
			"SPIRE reconcile passes this member made as leader, by pass (full: every entry compared; subjects: those a change named) and result (ok; failed: the pass failed as a whole and is retried; unconfirmed: stopped before its next change because a quorum did not confirm this member still leads).",
			[]string{"pass", "result"}, nil),
		errors: prometheus.NewDesc("vigil_spire_reconcile_errors_total",
			"SPIRE registration entries and agent bindings a reconcile pass went on without, by op (plan: the topology asks for one that cannot be made; create, update, delete: the server refused).",
			[]string{"op"}, nil),
		lag: prometheus.NewDesc("vigil_spire_reconcile_lag_seconds",
			"How long the oldest committed change not yet applied to the SPIRE server has waited; 0 when the server is up to date, and on members that do not lead.",
			nil, nil),
		desired: prometheus.NewDesc("vigil_spire_entries_desired",
			"SPIRE registration entries the topology called for at this member's last successful full reconcile pass; only on the member that reconciles.",
			nil, nil),
	}
}

func (c *spireCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.passes
	ch <- c.errors
	ch <- c.lag
	ch <- c.desired
}

func (c *spireCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.rec.Stats()
	for _, p := range []struct {
		pass          string
		ok, bad, lost uint64
	}{{"full", st.Passes.Full, st.Failed.Full, st.Unconfirmed.Full}, {"subjects", st.Passes.Subjects, st.Failed.Subjects, st.Unconfirmed.Subjects}} {
		ch <- prometheus.MustNewConstMetric(c.passes, prometheus.CounterValue, float64(p.ok), p.pass, "ok")
		ch <- prometheus.MustNewConstMetric(c.passes, prometheus.CounterValue, float64(p.bad), p.pass, "failed")
		ch <- prometheus.MustNewConstMetric(c.passes, prometheus.CounterValue, float64(p.lost), p.pass, "unconfirmed")
	}
	for i, op := range spire.ErrorOps {
		ch <- prometheus.MustNewConstMetric(c.errors, prometheus.CounterValue, float64(st.Errors[i]), op)
	}
	ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, st.Lag.Seconds())
	if s := c.rec.Status(); s.Leader && s.LastFull != nil {
		ch <- prometheus.MustNewConstMetric(c.desired, prometheus.GaugeValue, float64(s.LastFull.Desired))
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
// latency histogram, the xDS, Raft, attestation and (when it is on) SPIRE
// figures, and the Go runtime's and the process's own. It hooks the
// store's Observer to this member's Raft histograms.
func (n *Node) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	rm := newRaftMetrics()
	n.store.SetObserver(rm.observer())
	reg.MustRegister(newMemberCollector(n, n.decisions), n.decisions.latency, rm.commit, rm.apply,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(n.xds.metrics.collectors()...)
	reg.MustRegister(n.attest.metrics.collectors()...)
	if n.spire != nil {
		reg.MustRegister(newSPIRECollector(n.spire.rec))
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 4})
}
