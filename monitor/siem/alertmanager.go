package siem

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Alertmanager alert names.
const (
	AlertnameFinding  = "VigilFinding"
	AlertnameIncident = "VigilIncident"
)

// DefaultIncidentHold is how long Alertmanager keeps an incident that is
// not resolved firing after its last update.
const DefaultIncidentHold = 24 * time.Hour

// AlertmanagerConfig configures an [Alertmanager] sink.
type AlertmanagerConfig struct {
	// URL is Alertmanager's base URL (http://am:9093, with its route
	// prefix if it has one); /api/v2/alerts is appended unless the path
	// already ends with it. Basic auth may be given in the URL.
	URL   string
	Token string // sent as "Authorization: Bearer <token>" when set
	// Hostname is the reporting member (annotation "member").
	Hostname string
	// GeneratorURL links back to Vigil (e.g. its console), optional.
	GeneratorURL string
	// IncidentHold is the endsAt of an unresolved incident, counted from
	// the alert's time (default DefaultIncidentHold). A resolved or closed
	// incident ends at its time; a finding has no endsAt, so Alertmanager
	// resolves it after its resolve_timeout.
	IncidentHold time.Duration
	// Name is the sink's name (default "alertmanager").
	Name    string
	Client  *http.Client
	Timeout time.Duration // default DefaultHTTPTimeout
}

// Alertmanager posts alerts to Alertmanager's API v2 (POST /api/v2/alerts),
// a batch per request, with the same answer handling as [Webhook].
//
// Labels (which identify an alert in Alertmanager, so repeated findings of
// one detector on one device are one alert): alertname (VigilFinding or
// VigilIncident), severity, detector, device, device_kind, zone, class,
// gateway, owner, incident (incidents only), and label_<key> for each of the
// device's labels. Annotations: summary (title), description (message),
// finding_id or incident, incident_status, risk, actions, evidence, spiffe_id,
// member.
type Alertmanager struct {
	name         string
	hostname     string
	generatorURL string
	hold         time.Duration
	post         *poster
}

// NewAlertmanager checks cfg and returns the sink.
func NewAlertmanager(cfg AlertmanagerConfig) (*Alertmanager, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("siem: Alertmanager URL: %w", err)
	}
	if !strings.HasSuffix(strings.TrimSuffix(u.Path, "/"), "/api/v2/alerts") {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/api/v2/alerts"
	}
	p, err := newPoster(u.String(), cfg.Token, cfg.Client, cfg.Timeout)
	if err != nil {
		return nil, fmt.Errorf("siem: Alertmanager URL: %w", err)
	}
	if cfg.GeneratorURL != "" {
		if g, err := url.Parse(cfg.GeneratorURL); err != nil || !g.IsAbs() {
			return nil, fmt.Errorf("siem: Alertmanager generator URL %q is not an absolute URL", cfg.GeneratorURL)
		}
	}
	hold := cfg.IncidentHold
	if hold <= 0 {
		hold = DefaultIncidentHold
	}
	return &Alertmanager{
		name:         cmp.Or(cfg.Name, "alertmanager"),
		hostname:     cfg.Hostname,
		generatorURL: cfg.GeneratorURL,
		hold:         hold,
		post:         p,
	}, nil
}

// Name is the sink's name.
func (am *Alertmanager) Name() string { return am.name }

// amAlert is Alertmanager's postableAlert.
type amAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	StartsAt     string            `json:"startsAt"`
	EndsAt       string            `json:"endsAt,omitempty"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

// Deliver POSTs the batch as one array of alerts.
func (am *Alertmanager) Deliver(ctx context.Context, alerts []Alert) error {
	out := make([]amAlert, len(alerts))
	for i, a := range alerts {
		out[i] = am.alert(a)
	}
	body, err := json.Marshal(out)
	if err != nil {
		return Permanent(err)
	}
	return am.post.post(ctx, body)
}

func (am *Alertmanager) alert(a Alert) amAlert {
	labels := map[string]string{}
	set := func(m map[string]string, k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	for _, k := range sortedKeys(a.Labels) {
		set(labels, "label_"+sanitizeName(k, '_'), a.Labels[k])
	}
	set(labels, "severity", cmp.Or(strings.ToLower(a.Severity), "unknown"))
	set(labels, "detector", a.Detector)
	set(labels, "device", a.Device)
	set(labels, "device_kind", a.DeviceKind)
	set(labels, "zone", a.Zone)
	set(labels, "class", a.Class)
	set(labels, "gateway", a.Gateway)
	set(labels, "owner", a.Owner)

	ann := map[string]string{}
	set(ann, "summary", a.name())
	set(ann, "description", a.Message)
	set(ann, "member", am.hostname)
	set(ann, "spiffe_id", a.SPIFFEID)
	set(ann, "risk", strconv.Itoa(a.Risk))
	set(ann, "actions", strings.Join(a.Actions, ", "))
	set(ann, "incident_status", a.IncidentStatus)
	var ev []string
	for _, k := range sortedKeys(a.Evidence) {
		ev = append(ev, k+"="+a.Evidence[k])
	}
	set(ann, "evidence", strings.Join(ev, "; "))

	out := amAlert{Labels: labels, Annotations: ann, StartsAt: amTime(a.Time), GeneratorURL: am.generatorURL}
	if a.Kind == KindIncident {
		labels["alertname"] = AlertnameIncident
		labels["incident"] = a.ID
		if a.activity() == ActivityClose {
			out.EndsAt = amTime(a.Time)
		} else {
			out.EndsAt = amTime(a.Time.Add(am.hold))
		}
	} else {
		labels["alertname"] = AlertnameFinding
		set(ann, "finding_id", a.ID)
		set(ann, "incident", a.IncidentID)
	}
	return out
}

func amTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
