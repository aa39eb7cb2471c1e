package siem

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// OCSFVersion is the OCSF schema version the events follow.
const OCSFVersion = "1.1.0"

// OCSF classes and the Findings category.
const (
	ocsfCategoryFindings = 2
	ocsfDetectionFinding = 2004
	ocsfIncidentFinding  = 2005
)

var (
	// OCSF severity_id captions, by id (0–5).
	ocsfSeverities = [...]string{"Unknown", "Informational", "Low", "Medium", "High", "Critical"}
	// severityRank (0–4) → OCSF severity_id.
	ocsfSeverityIDs = [...]int{0, 2, 3, 4, 5}
	// severityRank (0–4) → caption of priority_id and impact_id (the same
	// scale, 0 Unknown … 4 Critical).
	ocsfLevels = [...]string{"Unknown", "Low", "Medium", "High", "Critical"}
	// activity → activity_id and its caption.
	ocsfActivities = map[string]struct {
		id   int
		name string
	}{
		ActivityCreate: {1, "Create"},
		ActivityUpdate: {2, "Update"},
		ActivityClose:  {3, "Close"},
	}
	// finding status_id by activity (New, In Progress, Resolved).
	ocsfFindingStatus      = map[string]int{ActivityCreate: 1, ActivityUpdate: 2, ActivityClose: 4}
	ocsfFindingStatusNames = map[int]string{1: "New", 2: "In Progress", 4: "Resolved"}
	// Incident status → status_id.
	ocsfIncidentStatus = map[string]int{
		"": 1, IncidentOpen: 1, IncidentAcked: 2, IncidentAwaiting: 3, IncidentResolved: 4, IncidentClosed: 5,
	}
	ocsfIncidentStatusNames = map[int]string{1: "New", 2: "In Progress", 3: "On Hold", 4: "Resolved", 5: "Closed", 99: "Other"}
	// risk_level_id captions (0 Info … 4 Critical).
	ocsfRiskLevels = [...]string{"Info", "Low", "Medium", "High", "Critical"}
)

type ocsfEvent struct {
	ActivityID   int    `json:"activity_id"`
	ActivityName string `json:"activity_name"`
	CategoryUID  int    `json:"category_uid"`
	CategoryName string `json:"category_name"`
	ClassUID     int    `json:"class_uid"`
	ClassName    string `json:"class_name"`
	TypeUID      int    `json:"type_uid"`
	TypeName     string `json:"type_name"`
	Time         int64  `json:"time"`
	SeverityID   int    `json:"severity_id"`
	Severity     string `json:"severity"`
	StatusID     int    `json:"status_id"`
	Status       string `json:"status,omitempty"`
	Message      string `json:"message,omitempty"`

	Metadata        ocsfMetadata      `json:"metadata"`
	FindingInfo     *ocsfFindingInfo  `json:"finding_info,omitempty"`
	FindingInfoList []ocsfFindingInfo `json:"finding_info_list,omitempty"`

	// Detection Finding.
	RiskScore   *int           `json:"risk_score,omitempty"`
	RiskLevelID *int           `json:"risk_level_id,omitempty"`
	RiskLevel   string         `json:"risk_level,omitempty"`
	Device      *ocsfDevice    `json:"device,omitempty"`
	Resources   []ocsfResource `json:"resources,omitempty"`
	Evidences   []ocsfEvidence `json:"evidences,omitempty"`

	// Incident Finding.
	Desc          string     `json:"desc,omitempty"`
	PriorityID    int        `json:"priority_id,omitempty"`
	Priority      string     `json:"priority,omitempty"`
	ImpactID      int        `json:"impact_id,omitempty"`
	Impact        string     `json:"impact,omitempty"`
	Assignee      *ocsfName  `json:"assignee,omitempty"`
	AssigneeGroup *ocsfName  `json:"assignee_group,omitempty"`
	Unmapped      *ocsfVigil `json:"unmapped,omitempty"`
}

type ocsfMetadata struct {
	Version        string      `json:"version"`
	Product        ocsfProduct `json:"product"`
	CorrelationUID string      `json:"correlation_uid,omitempty"`
}

type ocsfProduct struct {
	Name       string `json:"name"`
	VendorName string `json:"vendor_name"`
	Version    string `json:"version,omitempty"`
}

type ocsfFindingInfo struct {
	UID         string        `json:"uid"`
	Title       string        `json:"title,omitempty"`
	Desc        string        `json:"desc,omitempty"`
	Types       []string      `json:"types,omitempty"`
	CreatedTime int64         `json:"created_time,omitempty"`
	Analytic    *ocsfAnalytic `json:"analytic,omitempty"`
}

type ocsfAnalytic struct {
	UID    string `json:"uid,omitempty"`
	Name   string `json:"name,omitempty"`
	TypeID int    `json:"type_id"`
	Type   string `json:"type"`
}

type ocsfName struct {
	Name string `json:"name"`
}

type ocsfDevice struct {
	TypeID int        `json:"type_id"`
	Type   string     `json:"type"`
	Name   string     `json:"name,omitempty"`
	UID    string     `json:"uid,omitempty"`
	Zone   string     `json:"zone,omitempty"`
	Groups []ocsfName `json:"groups,omitempty"`
	Owner  *ocsfName  `json:"owner,omitempty"`
}

type ocsfResource struct {
	UID    string            `json:"uid,omitempty"`
	Name   string            `json:"name,omitempty"`
	Type   string            `json:"type,omitempty"`
	Group  *ocsfName         `json:"group,omitempty"`
	Owner  *ocsfName         `json:"owner,omitempty"`
	Labels []string          `json:"labels,omitempty"`
	Data   map[string]string `json:"data,omitempty"`
}

type ocsfEvidence struct {
	Data   map[string]string `json:"data"`
	Device *ocsfDevice       `json:"device,omitempty"`
}

// ocsfVigil holds, under the event's unmapped attribute, what OCSF has no
// attribute for in the class.
type ocsfVigil struct {
	Member         string            `json:"member,omitempty"`
	Device         string            `json:"device,omitempty"`
	DeviceKind     string            `json:"device_kind,omitempty"`
	SPIFFEID       string            `json:"spiffe_id,omitempty"`
	Zone           string            `json:"zone,omitempty"`
	Class          string            `json:"class,omitempty"`
	Gateway        string            `json:"gateway,omitempty"`
	Owner          string            `json:"owner,omitempty"`
	Risk           *int              `json:"risk,omitempty"`
	IncidentID     string            `json:"incident_id,omitempty"`
	IncidentStatus string            `json:"incident_status,omitempty"`
	Actions        []string          `json:"actions,omitempty"`
	Learning       bool              `json:"learning,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
}

// MarshalOCSF renders a as one OCSF 1.1 event in JSON: a Detection Finding
// (class 2004) for a finding, an Incident Finding (class 2005) for an
// incident. version is the product version, hostname the reporting member.
func MarshalOCSF(a Alert, version, hostname string) ([]byte, error) {
	return json.Marshal(ocsfOf(a, version, hostname))
}

func ocsfOf(a Alert, version, hostname string) *ocsfEvent {
	rank := severityRank(a.Severity)
	act := ocsfActivities[a.activity()]
	ms := a.Time.UnixMilli()
	e := &ocsfEvent{
		ActivityID:   act.id,
		ActivityName: act.name,
		CategoryUID:  ocsfCategoryFindings,
		CategoryName: "Findings",
		Time:         ms,
		SeverityID:   ocsfSeverityIDs[rank],
		Severity:     ocsfSeverities[ocsfSeverityIDs[rank]],
		Message:      cmp.Or(a.Message, a.Title),
		Metadata: ocsfMetadata{
			Version: OCSFVersion,
			Product: ocsfProduct{Name: "Vigil", VendorName: "Vigil", Version: version},
		},
	}
	risk := a.Risk
	vigil := &ocsfVigil{
		Member:     hostname,
		Zone:       a.Zone,
		Class:      a.Class,
		Gateway:    a.Gateway,
		IncidentID: a.IncidentID,
		Actions:    a.Actions,
		Learning:   a.Learning,
	}
	if a.Kind == KindIncident {
		e.ClassUID, e.ClassName = ocsfIncidentFinding, "Incident Finding"
		e.Metadata.CorrelationUID = a.ID
		status, ok := ocsfIncidentStatus[strings.ToLower(a.IncidentStatus)]
		if !ok {
			status = 99
		}
		e.StatusID = status
		e.Status = ocsfIncidentStatusNames[status]
		if status == 99 {
			e.Status = a.IncidentStatus
		}
		for _, f := range a.Findings {
			e.FindingInfoList = append(e.FindingInfoList, ocsfFindingInfo{UID: f})
		}
		if len(e.FindingInfoList) == 0 {
			e.FindingInfoList = []ocsfFindingInfo{{UID: a.ID, Title: a.name()}}
		}
		e.Desc = cmp.Or(a.Message, a.Title)
		e.PriorityID, e.Priority = rank, ocsfLevels[rank]
		e.ImpactID, e.Impact = rank, ocsfLevels[rank]
		if a.Owner != "" {
			e.Assignee = &ocsfName{Name: a.Owner}
		} else {
			e.AssigneeGroup = &ocsfName{Name: "vigil"}
		}
		vigil.Device, vigil.DeviceKind, vigil.SPIFFEID, vigil.Owner = a.Device, a.DeviceKind, a.SPIFFEID, a.Owner
		vigil.Risk = &risk
		vigil.IncidentID, vigil.IncidentStatus = a.ID, a.IncidentStatus
		vigil.Labels = a.Labels
	} else {
		e.ClassUID, e.ClassName = ocsfDetectionFinding, "Detection Finding"
		e.Metadata.CorrelationUID = a.IncidentID
		e.StatusID = ocsfFindingStatus[a.activity()]
		e.Status = ocsfFindingStatusNames[e.StatusID]
		fi := &ocsfFindingInfo{UID: a.ID, Title: a.name(), Desc: a.Message, CreatedTime: ms}
		if a.Detector != "" {
			fi.Types = []string{a.Detector}
			fi.Analytic = &ocsfAnalytic{UID: a.Detector, Name: a.Detector, TypeID: 2, Type: "Behavioral"}
		}
		e.FindingInfo = fi
		level := min(max(risk, 0), 100) / 20
		level = min(level, 4)
		e.RiskScore, e.RiskLevelID, e.RiskLevel = &risk, &level, ocsfRiskLevels[level]
		dev := ocsfDeviceOf(a)
		e.Device = dev
		if a.Device != "" || a.SPIFFEID != "" {
			r := ocsfResource{
				UID:   cmp.Or(a.SPIFFEID, a.Device),
				Name:  a.Device,
				Type:  cmp.Or(a.DeviceKind, "device"),
				Owner: dev.Owner,
			}
			if a.Class != "" {
				r.Group = &ocsfName{Name: a.Class}
			}
			for _, k := range sortedKeys(a.Labels) {
				r.Labels = append(r.Labels, k+"="+a.Labels[k])
			}
			data := map[string]string{"zone": a.Zone, "class": a.Class, "gateway": a.Gateway}
			for k, v := range data {
				if v == "" {
					delete(data, k)
				}
			}
			if len(data) > 0 {
				r.Data = data
			}
			e.Resources = []ocsfResource{r}
		}
		if len(a.Evidence) > 0 {
			e.Evidences = []ocsfEvidence{{Data: a.Evidence, Device: dev}}
		}
	}
	e.TypeUID = e.ClassUID*100 + act.id
	e.TypeName = e.ClassName + ": " + act.name
	e.Unmapped = vigil
	return e
}

// ocsfDeviceOf is the alert's subject as an OCSF device: type IOT (7) for
// a device, Other (99, "Gateway") for a gateway, Unknown (0) otherwise.
func ocsfDeviceOf(a Alert) *ocsfDevice {
	d := &ocsfDevice{Name: a.Device, UID: a.SPIFFEID, Zone: a.Zone}
	switch a.DeviceKind {
	case "", "device":
		d.TypeID, d.Type = 7, "IOT"
	case "gateway":
		d.TypeID, d.Type = 99, "Gateway"
	default:
		d.TypeID, d.Type = 0, "Unknown"
	}
	if a.Class != "" {
		d.Groups = []ocsfName{{Name: a.Class}}
	}
	if a.Owner != "" {
		d.Owner = &ocsfName{Name: a.Owner}
	}
	return d
}

// WebhookConfig configures a [Webhook] sink.
type WebhookConfig struct {
	URL   string // http:// or https://
	Token string // sent as "Authorization: Bearer <token>" when set
	// Hostname is the reporting member (unmapped.member).
	Hostname string
	// Version is the product version in metadata.product (default
	// DefaultVersion()).
	Version string
	// Name is the sink's name (default "ocsf").
	Name string
	// Client sends the requests (default: one with Timeout and the
	// system's roots).
	Client  *http.Client
	Timeout time.Duration // default DefaultHTTPTimeout
}

// Webhook POSTs alerts as OCSF events: each batch is one JSON array of
// events ("Content-Type: application/json"). A 2xx answer delivers the
// batch; a 4xx other than 401, 403, 404, 405, 407, 408, 421, 425, 429 and
// 431 refuses it (the outbox then finds and skips the refused events);
// anything else is retried.
type Webhook struct {
	name     string
	version  string
	hostname string
	post     *poster
}

// NewWebhook checks cfg and returns the sink.
func NewWebhook(cfg WebhookConfig) (*Webhook, error) {
	p, err := newPoster(cfg.URL, cfg.Token, cfg.Client, cfg.Timeout)
	if err != nil {
		return nil, fmt.Errorf("siem: webhook URL: %w", err)
	}
	return &Webhook{
		name:     cmp.Or(cfg.Name, "ocsf"),
		version:  cmp.Or(cfg.Version, DefaultVersion()),
		hostname: cfg.Hostname,
		post:     p,
	}, nil
}

// Name is the sink's name.
func (w *Webhook) Name() string { return w.name }

// Deliver POSTs the batch as a JSON array of OCSF events.
func (w *Webhook) Deliver(ctx context.Context, alerts []Alert) error {
	events := make([]*ocsfEvent, len(alerts))
	for i, a := range alerts {
		events[i] = ocsfOf(a, w.version, w.hostname)
	}
	body, err := json.Marshal(events)
	if err != nil {
		return Permanent(err)
	}
	return w.post.post(ctx, body)
}
