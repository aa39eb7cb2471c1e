package siem

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func indentJSON(t *testing.T, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	out.WriteByte('\n')
	return out.Bytes()
}

// TestWebhookOCSF pins the OCSF events (a Detection Finding and an Incident
// Finding) and the request the webhook receives.
func TestWebhookOCSF(t *testing.T) {
	r := newHTTPReceiver(t)
	w, err := NewWebhook(WebhookConfig{URL: r.srv.URL + "/ocsf", Token: "s3cret", Hostname: "vigil-1", Version: "1.4.0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Deliver(context.Background(), []Alert{sampleFinding(), sampleIncident()}); err != nil {
		t.Fatal(err)
	}
	if len(r.bodies) != 1 {
		t.Fatalf("%d requests", len(r.bodies))
	}
	h := r.headers[0]
	if h.Get("Authorization") != "Bearer s3cret" || h.Get("Content-Type") != "application/json" || r.paths[0] != "/ocsf" {
		t.Errorf("request: path %s, headers %v", r.paths[0], h)
	}
	golden(t, "ocsf.golden.json", indentJSON(t, r.bodies[0]))

	var events []map[string]any
	if err := json.Unmarshal(r.bodies[0], &events); err != nil {
		t.Fatal(err)
	}
	// The attributes OCSF 1.1 requires of each class, and the IDs.
	for i, want := range []struct{ class, typ float64 }{{2004, 200401}, {2005, 200501}} {
		e := events[i]
		for _, k := range []string{"activity_id", "category_uid", "class_uid", "type_uid", "time", "severity_id", "metadata", "status_id"} {
			if _, ok := e[k]; !ok {
				t.Errorf("event %d has no %s", i, k)
			}
		}
		if e["class_uid"] != want.class || e["type_uid"] != want.typ || e["category_uid"] != 2.0 {
			t.Errorf("event %d: class %v type %v category %v", i, e["class_uid"], e["type_uid"], e["category_uid"])
		}
		md := e["metadata"].(map[string]any)
		if md["version"] != "1.1.0" || md["product"].(map[string]any)["name"] != "Vigil" || md["product"].(map[string]any)["vendor_name"] != "Vigil" {
			t.Errorf("event %d metadata %v", i, md)
		}
	}
	if _, ok := events[0]["finding_info"].(map[string]any)["uid"]; !ok {
		t.Error("detection finding without finding_info.uid")
	}
	if l, ok := events[1]["finding_info_list"].([]any); !ok || len(l) != 2 {
		t.Errorf("incident finding_info_list %v", events[1]["finding_info_list"])
	}
	if events[0]["time"] != float64(testTime.UnixMilli()) {
		t.Errorf("time %v, want milliseconds %d", events[0]["time"], testTime.UnixMilli())
	}
}

func TestOCSFMapping(t *testing.T) {
	for _, tc := range []struct {
		a                    Alert
		typeUID, status, sev int
	}{
		{Alert{Kind: KindFinding, ID: "f", Severity: SeverityLow}, 200401, 1, 2},
		{Alert{Kind: KindFinding, ID: "f", Severity: SeverityMedium, Activity: ActivityUpdate}, 200402, 2, 3},
		{Alert{Kind: KindFinding, ID: "f", Severity: "weird", Activity: ActivityClose}, 200403, 4, 0},
		{Alert{Kind: KindIncident, ID: "i", Severity: SeverityHigh, IncidentStatus: IncidentOpen}, 200501, 1, 4},
		{Alert{Kind: KindIncident, ID: "i", Severity: SeverityCritical, IncidentStatus: IncidentAwaiting}, 200502, 3, 5},
		{Alert{Kind: KindIncident, ID: "i", IncidentStatus: IncidentAcked}, 200502, 2, 0},
		{Alert{Kind: KindIncident, ID: "i", IncidentStatus: IncidentResolved}, 200503, 4, 0},
		{Alert{Kind: KindIncident, ID: "i", IncidentStatus: IncidentOpen, Activity: ActivityUpdate}, 200502, 1, 0},
		{Alert{Kind: KindIncident, ID: "i", IncidentStatus: "escalated"}, 200502, 99, 0},
	} {
		e := ocsfOf(tc.a, "v", "m")
		if e.TypeUID != tc.typeUID || e.StatusID != tc.status || e.SeverityID != tc.sev {
			t.Errorf("%+v: type_uid %d status_id %d severity_id %d; want %d %d %d", tc.a, e.TypeUID, e.StatusID, e.SeverityID, tc.typeUID, tc.status, tc.sev)
		}
		if tc.status == 99 && e.Status != "escalated" {
			t.Errorf("status %q, want the incident's own", e.Status)
		}
	}
}

// TestAlertmanager pins the alerts posted to Alertmanager's API v2.
func TestAlertmanager(t *testing.T) {
	r := newHTTPReceiver(t)
	am, err := NewAlertmanager(AlertmanagerConfig{URL: r.srv.URL + "/am/", Hostname: "vigil-1", GeneratorURL: "https://vigil.example/ui/"})
	if err != nil {
		t.Fatal(err)
	}
	resolved := sampleIncident()
	resolved.IncidentStatus = IncidentResolved
	resolved.Time = resolved.Time.Add(time.Hour)
	if err := am.Deliver(context.Background(), []Alert{sampleFinding(), sampleIncident(), resolved}); err != nil {
		t.Fatal(err)
	}
	if len(r.paths) != 1 || r.paths[0] != "/am/api/v2/alerts" {
		t.Fatalf("paths %v", r.paths)
	}
	golden(t, "alertmanager.golden.json", indentJSON(t, r.bodies[0]))

	var alerts []struct {
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
		StartsAt    time.Time         `json:"startsAt"`
		EndsAt      *time.Time        `json:"endsAt"`
	}
	if err := json.Unmarshal(r.bodies[0], &alerts); err != nil {
		t.Fatal(err)
	}
	f, open, done := alerts[0], alerts[1], alerts[2]
	if f.Labels["alertname"] != AlertnameFinding || f.Labels["severity"] != "high" || f.Labels["detector"] != "new-destination" ||
		f.Labels["device"] != "slc-n1-001" || f.Labels["zone"] != "north" || f.EndsAt != nil || !f.StartsAt.Equal(testTime.Truncate(time.Millisecond)) {
		t.Errorf("finding %+v", f)
	}
	if open.Labels["alertname"] != AlertnameIncident || open.Labels["incident"] != "inc-7" || open.EndsAt == nil ||
		!open.EndsAt.Equal(open.StartsAt.Add(DefaultIncidentHold)) {
		t.Errorf("open incident %+v", open)
	}
	if done.EndsAt == nil || !done.EndsAt.Equal(done.StartsAt) {
		t.Errorf("resolved incident %+v", done)
	}
	for _, u := range []string{"http://am:9093", "http://am:9093/", "http://am:9093/api/v2/alerts"} {
		am, err := NewAlertmanager(AlertmanagerConfig{URL: u})
		if err != nil || am.post.url != "http://am:9093/api/v2/alerts" {
			t.Errorf("%s: %v, %v", u, am, err)
		}
	}
}

// TestPosterAnswers: which answers deliver, which refuse the alert and
// which are retried.
func TestPosterAnswers(t *testing.T) {
	for _, tc := range []struct {
		status          int
		ok, permanent   bool
		substr, display string
	}{
		{200, true, false, "", ""},
		{202, true, false, "", ""},
		{400, false, true, "400", ""},
		{413, false, true, "413", ""},
		{422, false, true, "422", ""},
		{401, false, false, "401", ""},
		{403, false, false, "403", ""},
		{404, false, false, "404", ""},
		{408, false, false, "408", ""},
		{429, false, false, "429", ""},
		{500, false, false, "500", ""},
		{503, false, false, "503", ""},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tc.status)
			w.Write([]byte("detail\x01 here"))
		}))
		p, err := newPoster(strings.Replace(srv.URL, "http://", "http://user:pw@", 1), "", nil, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		err = p.post(context.Background(), []byte("[]"))
		srv.Close()
		switch {
		case tc.ok && err != nil:
			t.Errorf("%d: %v", tc.status, err)
		case !tc.ok && (err == nil || IsPermanent(err) != tc.permanent || !strings.Contains(err.Error(), tc.substr)):
			t.Errorf("%d: %v (permanent %v), want permanent %v", tc.status, err, IsPermanent(err), tc.permanent)
		case err != nil && strings.Contains(err.Error(), "pw"):
			t.Errorf("%d: the error shows the password: %v", tc.status, err)
		}
	}
	p, err := newPoster("http://127.0.0.1:1/x", "", nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.post(context.Background(), nil); err == nil || IsPermanent(err) {
		t.Errorf("connection refused: %v, want a retryable error", err)
	}
	for _, u := range []string{"ftp://x/", "http://", "::"} {
		if _, err := newPoster(u, "", nil, 0); err == nil {
			t.Errorf("%q: want an error", u)
		}
	}
}
