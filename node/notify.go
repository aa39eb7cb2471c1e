package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// OwnerNotification is what the playbook posts to a subject's owner: the
// `owner` label of the device (else its gateway's, else its class's),
// when that label is an http(s) URL, or to --owner-webhook with the label
// as "owner".
type OwnerNotification struct {
	Owner    string             `json:"owner"`
	Incident string             `json:"incident"`
	Status   string             `json:"status"`
	Title    string             `json:"title"`
	Subject  topology.Subject   `json:"subject"`
	SPIFFEID string             `json:"spiffeId"`
	Zone     string             `json:"zone,omitempty"`
	Class    string             `json:"class,omitempty"`
	Risk     int                `json:"risk"`
	At       time.Time          `json:"at"`
	Findings []topology.Finding `json:"findings"`
	Actions  []topology.Action  `json:"actions"`
}

var notifyClient = &http.Client{Timeout: 5 * time.Second}

func (m *monitorPart) notifyOwner(ctx context.Context, inc topology.Incident, info subjectInfo, by string) topology.Action {
	act := topology.Action{Name: "notify-owner", By: by}
	target := ""
	switch {
	case info.Owner == "":
		act.Outcome, act.Detail = topology.ActionSkipped, "no owner label on the device, its gateway or its class"
	case strings.HasPrefix(info.Owner, "https://") || strings.HasPrefix(info.Owner, "http://"):
		target = info.Owner
	case m.cfg.OwnerWebhook != "":
		target = m.cfg.OwnerWebhook
	default:
		act.Outcome, act.Detail = topology.ActionSkipped, fmt.Sprintf("owner %q has no webhook (set --owner-webhook)", ownerName(info.Owner))
	}
	if target == "" {
		act.At = m.n.cfg.Clock().UTC()
		return act
	}
	body, _ := json.Marshal(OwnerNotification{Owner: ownerName(info.Owner), Incident: inc.ID, Status: inc.Status, Title: inc.Title,
		Subject: inc.Subject, SPIFFEID: info.SPIFFEID, Zone: info.Zone, Class: info.Class, Risk: inc.Risk, At: inc.OpenedAt,
		Findings: inc.Findings, Actions: inc.Actions})
	shown := redactURL(target)
	var lastErr error
	for attempt := range 3 {
		if attempt > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(attempt) * time.Second):
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
		if err != nil {
			lastErr = plainErr(err)
			break
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "vigil-monitor")
		resp, err := notifyClient.Do(req)
		if err != nil {
			lastErr = plainErr(err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			act.At, act.Outcome, act.Detail = m.n.cfg.Clock().UTC(), topology.ActionOK, fmt.Sprintf("owner %s notified at %s (HTTP %d)", ownerName(info.Owner), shown, resp.StatusCode)
			return act
		}
		lastErr = fmt.Errorf("HTTP %d", resp.StatusCode)
		if resp.StatusCode < 500 && resp.StatusCode != 429 && resp.StatusCode != 408 {
			break
		}
	}
	act.At, act.Outcome, act.Detail = m.n.cfg.Clock().UTC(), topology.ActionFailed, clipReason(fmt.Sprintf("owner %s at %s: %v", ownerName(info.Owner), shown, lastErr))
	return act
}

// redactURL keeps a webhook's scheme and host: paths (Slack, Teams),
// query strings and user info often carry secrets, and what is shown here
// goes to the replicated incident, the SIEM and logs.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "(a URL)"
	}
	return u.Scheme + "://" + u.Host + "/…"
}

// ownerName is the owner label as shown: a URL redacted.
func ownerName(owner string) string {
	if strings.HasPrefix(owner, "https://") || strings.HasPrefix(owner, "http://") {
		return redactURL(owner)
	}
	return owner
}

// plainErr is an error without the URL net/http puts in it.
func plainErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
