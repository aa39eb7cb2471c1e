package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

// The monitor's endpoints:
//
//	GET  /v1/incidents[?status=S&device=N&gateway=N]  incidents, newest first
//	GET  /v1/incidents/{id}                           one incident
//	POST /v1/incidents/{id}/ack|approve|resolve       an operator's decision ({"note": …})
//	GET  /v1/incidents/{id}/export                    the incident and its evidence bundle
//	POST /v1/devices/{name}/signals                   a gateway's signal about a device
//	POST /v1/gateways/{name}/signals                  … about a gateway itself
//	POST /v1/internal/incidents                       open an incident (peer token only)
//	POST /v1/internal/incidents/{id}                  update an incident (peer token only)
//	POST /v1/internal/monitor/events                  events for the subjects this member owns (peer)
//	GET  /v1/internal/monitor/evidence?subject=K/N&since=T  this member's log lines about a subject (peer)

// IncidentStore is what the incident endpoints need of the store.
type IncidentStore interface {
	OpenIncident(ctx context.Context, inc topology.Incident) (topology.Revision, error)
	UpdateIncident(ctx context.Context, u raft.IncidentUpdate) (topology.Revision, error)
	Incidents() []topology.Incident
	Incident(id string) (topology.Incident, bool)
}

var _ IncidentStore = (*raft.Store)(nil)

// Monitor is the member's monitor, as the API reaches it.
type Monitor interface {
	// Ingest takes a batch of events another member forwarded (opaque to
	// the API; the monitor decodes and checks it).
	Ingest(ctx context.Context, body []byte) error
	// Signal records a gateway's signal about a subject.
	Signal(ctx context.Context, sub topology.Subject, req SignalRequest, actor string) (SignalResponse, error)
	// Evidence writes this member's log lines about sub since the given
	// time, one JSON object per line.
	Evidence(ctx context.Context, sub topology.Subject, since time.Time, w io.Writer) error
	// Bundle opens the evidence bundle of an incident if this member
	// holds it.
	Bundle(id string) (io.ReadCloser, error)
	// Status describes the monitor for GET /v1/node.
	Status() any
}

// SignalRequest is a gateway's observation about a device (or itself).
type SignalRequest struct {
	Signal string `json:"signal"` // tamper, reboot, power-loss, …
	Detail string `json:"detail,omitempty"`
	// Gateway is the gateway reporting (default: the device's).
	Gateway string    `json:"gateway,omitempty"`
	At      time.Time `json:"at,omitzero"`
}

// SignalResponse says the signal was taken.
type SignalResponse struct {
	Accepted bool   `json:"accepted"`
	Owner    string `json:"owner"` // the member whose monitor judges the subject
}

// IncidentAction is an operator's note with ack, approve or resolve.
type IncidentAction struct {
	Note string `json:"note,omitempty"`
}

// IncidentExport is an incident with its evidence bundle (the sealed,
// hash-chained lines `vigil audit verify` checks).
type IncidentExport struct {
	Incident topology.Incident `json:"incident"`
	Evidence string            `json:"evidence,omitempty"`
	// EvidenceError says why the bundle is missing.
	EvidenceError string `json:"evidenceError,omitempty"`
}

const maxSignalName = 64

// maxExportBytes bounds an evidence bundle served whole in JSON.
const maxExportBytes = 256 << 20

func (s *Server) incidentRoutes() {
	s.route("GET /v1/incidents", s.listIncidents)
	s.route("GET /v1/incidents/{id}", s.getIncident)
	s.route("POST /v1/incidents/{id}/ack", s.write(s.decideIncident("ack")))
	s.route("POST /v1/incidents/{id}/approve", s.write(s.decideIncident("approve")))
	s.route("POST /v1/incidents/{id}/resolve", s.write(s.decideIncident("resolve")))
	s.route("GET /v1/incidents/{id}/export", s.exportIncident)
	s.route("POST /v1/devices/{name}/signals", s.signal(topology.KindDevice))
	s.route("POST /v1/gateways/{name}/signals", s.signal(topology.KindGateway))
	s.route("POST /v1/internal/incidents", s.write(s.openIncident))
	s.route("POST /v1/internal/incidents/{id}", s.write(s.updateIncident))
	s.route("POST /v1/internal/monitor/events", s.ingestEvents)
	s.route("GET /v1/internal/monitor/evidence", s.evidence)
}

func (s *Server) incidents() (IncidentStore, error) {
	is, ok := s.cfg.Store.(IncidentStore)
	if !ok {
		return nil, &Error{Status: http.StatusNotImplemented, Code: CodeInternal, Message: "this member keeps no incidents"}
	}
	return is, nil
}

func (s *Server) monitor() (Monitor, error) {
	if s.cfg.Monitor == nil {
		return nil, &Error{Status: http.StatusNotImplemented, Code: CodeInternal, Message: "this member runs no monitor"}
	}
	return s.cfg.Monitor, nil
}

func peerOnly(r *http.Request, what string) error {
	if actorOf(r) != PeerActor {
		return &Error{Status: http.StatusForbidden, Code: CodeForbidden, Message: "only cluster members (the peer token) may " + what}
	}
	return nil
}

func (s *Server) listIncidents(w http.ResponseWriter, r *http.Request) error {
	is, err := s.incidents()
	if err != nil {
		return err
	}
	q := r.URL.Query()
	status, dev, gw := q.Get("status"), q.Get("device"), q.Get("gateway")
	out := slices.DeleteFunc(is.Incidents(), func(inc topology.Incident) bool {
		return status != "" && inc.Status != status ||
			dev != "" && inc.Subject != topology.DeviceSubject(dev) ||
			gw != "" && inc.Subject != topology.GatewaySubject(gw)
	})
	if n, err := strconv.Atoi(q.Get("limit")); err == nil && n > 0 && n < len(out) {
		out = out[:n]
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getIncident(w http.ResponseWriter, r *http.Request) error {
	is, err := s.incidents()
	if err != nil {
		return err
	}
	inc, ok := is.Incident(r.PathValue("id"))
	if !ok {
		return notFound("no incident %q", r.PathValue("id"))
	}
	writeJSON(w, http.StatusOK, inc)
	return nil
}

// decideIncident is an operator's ack, approve or resolve. Approving
// quarantines the subject first (the same write as `vigil device
// quarantine`), then records the approval; an incident that is no longer
// awaiting is not approved.
func (s *Server) decideIncident(verb string) writeHandler {
	return func(w http.ResponseWriter, r *http.Request, body []byte) error {
		is, err := s.incidents()
		if err != nil {
			return err
		}
		var req IncidentAction
		if len(strings.TrimSpace(string(body))) > 0 {
			if err := decodeStrict(body, &req); err != nil {
				return err
			}
		}
		if len(req.Note) > maxReasonLen {
			return badRequest("note is longer than %d bytes", maxReasonLen)
		}
		id := r.PathValue("id")
		inc, ok := is.Incident(id)
		if !ok {
			return notFound("no incident %q", id)
		}
		now := s.cfg.Now().UTC()
		actor := actorOf(r)
		u := raft.IncidentUpdate{ID: id, At: now}
		act := topology.Action{At: now, Name: verb, Outcome: topology.ActionOK, By: actor, Detail: req.Note}
		switch verb {
		case "ack":
			u.Status, u.From = topology.IncidentAcked, []string{topology.IncidentOpen, topology.IncidentAwaiting}
		case "resolve":
			u.Status, u.From = topology.IncidentResolved, []string{topology.IncidentOpen, topology.IncidentAwaiting, topology.IncidentAcked}
		case "approve":
			if inc.Status != topology.IncidentAwaiting {
				return &Error{Status: http.StatusConflict, Code: CodeRejected,
					Message: fmt.Sprintf("incident %s is %s: only an incident awaiting approval can be approved", id, inc.Status)}
			}
			reason := "quarantine approved by " + actor + " for incident " + id
			if req.Note != "" {
				reason += ": " + req.Note
			}
			_, err := s.cfg.Store.UpdateState(r.Context(), []raft.StateOp{{Subject: inc.Subject, Op: raft.OpQuarantine,
				Quarantine: &topology.Quarantine{Reason: reason, By: actor, Since: now}}})
			if err != nil {
				return err
			}
			u.Status, u.From = topology.IncidentOpen, []string{topology.IncidentAwaiting}
			act.Detail = strings.TrimSpace("quarantine approved " + req.Note)
			u.Actions = append(u.Actions, act, topology.Action{At: now, Name: "quarantine", Outcome: topology.ActionOK, By: actor,
				Detail: "authz denies everywhere; RBAC pushed to gateways; SPIRE entry deleted"})
		}
		if verb != "approve" {
			u.Actions = []topology.Action{act}
		}
		if _, err := is.UpdateIncident(r.Context(), u); err != nil {
			return err
		}
		inc, _ = is.Incident(id)
		s.cfg.Logger.Info("api: incident "+verb, "incident", id, "subject", inc.Subject, "actor", actor)
		writeJSON(w, http.StatusOK, inc)
		return nil
	}
}

func (s *Server) openIncident(w http.ResponseWriter, r *http.Request, body []byte) error {
	if err := peerOnly(r, "open incidents"); err != nil {
		return err
	}
	is, err := s.incidents()
	if err != nil {
		return err
	}
	var inc topology.Incident
	if err := decodeStrict(body, &inc); err != nil {
		return err
	}
	rev, err := is.OpenIncident(r.Context(), inc)
	var exists *raft.IncidentExistsError
	if errors.As(err, &exists) {
		return &Error{Status: http.StatusConflict, Code: CodeIncidentExists, Message: exists.ID}
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, WriteResponse{Revision: rev})
	return nil
}

func (s *Server) updateIncident(w http.ResponseWriter, r *http.Request, body []byte) error {
	if err := peerOnly(r, "update incidents directly"); err != nil {
		return err
	}
	is, err := s.incidents()
	if err != nil {
		return err
	}
	var u raft.IncidentUpdate
	if err := decodeStrict(body, &u); err != nil {
		return err
	}
	if u.ID != r.PathValue("id") {
		return badRequest("the update names incident %q, the path %q", u.ID, r.PathValue("id"))
	}
	rev, err := is.UpdateIncident(r.Context(), u)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, WriteResponse{Revision: rev})
	return nil
}

// exportIncident returns the incident with its evidence bundle, which the
// member that opened the incident holds: another member fetches it from
// there.
func (s *Server) exportIncident(w http.ResponseWriter, r *http.Request) error {
	is, err := s.incidents()
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	inc, ok := is.Incident(id)
	if !ok {
		return notFound("no incident %q", id)
	}
	out := IncidentExport{Incident: inc}
	if m := s.cfg.Monitor; m != nil {
		if rc, err := m.Bundle(id); err == nil {
			b, err := io.ReadAll(io.LimitReader(rc, maxExportBytes+1))
			rc.Close()
			switch {
			case err != nil:
				out.EvidenceError = err.Error()
			case len(b) > maxExportBytes:
				// Never a cut bundle: it would not verify, and would look
				// tampered with.
				out.EvidenceError = fmt.Sprintf("the evidence bundle is larger than %d MiB: copy evidence/%s.log from member %s's data dir",
					maxExportBytes>>20, id, s.cfg.Store.ID())
			default:
				out.Evidence = string(b)
			}
			writeJSON(w, http.StatusOK, out)
			return nil
		} else {
			out.EvidenceError = err.Error()
		}
	}
	if r.URL.Query().Get("local") == "" && inc.OpenedBy != "" && inc.OpenedBy != s.cfg.Store.ID() {
		if mem, ok := s.cfg.Store.Member(inc.OpenedBy); ok && mem.APIAddr != "" {
			var remote IncidentExport
			err := s.cfg.Connector.Client(mem.APIAddr, s.cfg.PeerToken).do(r.Context(), http.MethodGet,
				"/v1/incidents/"+id+"/export?local=1", "", nil, &remote)
			if err == nil {
				remote.Incident = inc
				writeJSON(w, http.StatusOK, remote)
				return nil
			}
			out.EvidenceError = fmt.Sprintf("member %s holds the evidence bundle and did not give it: %v", inc.OpenedBy, err)
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) signal(kind topology.Kind) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		m, err := s.monitor()
		if err != nil {
			return err
		}
		var req SignalRequest
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
		if err != nil {
			return badRequest("reading request body: %v", err)
		}
		if err := decodeStrict(body, &req); err != nil {
			return err
		}
		if req.Signal == "" || len(req.Signal) > maxSignalName || !topology.IsName(req.Signal) {
			return badRequest("signal must be a name such as tamper or reboot (lowercase letters, digits and '-', at most %d)", maxSignalName)
		}
		if len(req.Detail) > maxReasonLen {
			return badRequest("detail is longer than %d bytes", maxReasonLen)
		}
		sub := topology.Subject{Kind: kind, Name: r.PathValue("name")}
		if !s.cfg.Store.Current().Index().Exists(sub) {
			return notFound("no %s named %q", kind, sub.Name)
		}
		resp, err := m.Signal(r.Context(), sub, req, actorOf(r))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusAccepted, resp)
		return nil
	}
}

func (s *Server) ingestEvents(w http.ResponseWriter, r *http.Request) error {
	if err := peerOnly(r, "forward monitor events"); err != nil {
		return err
	}
	m, err := s.monitor()
	if err != nil {
		return err
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	if err != nil {
		return badRequest("reading request body: %v", err)
	}
	if err := m.Ingest(r.Context(), body); err != nil {
		return badRequest("%v", err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) evidence(w http.ResponseWriter, r *http.Request) error {
	if err := peerOnly(r, "collect evidence"); err != nil {
		return err
	}
	m, err := s.monitor()
	if err != nil {
		return err
	}
	kind, name, ok := strings.Cut(r.URL.Query().Get("subject"), "/")
	k, kerr := topology.ParseKind(kind)
	if !ok || kerr != nil || name == "" {
		return badRequest("subject must be device/NAME or gateway/NAME")
	}
	since, err := time.Parse(time.RFC3339Nano, r.URL.Query().Get("since"))
	if err != nil {
		return badRequest("since must be an RFC 3339 time: %v", err)
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	return m.Evidence(r.Context(), topology.Subject{Kind: k, Name: name}, since, w)
}

// Incidents lists the cluster's incidents (status "" for all).
func (c *Client) Incidents(ctx context.Context, status string) ([]topology.Incident, error) {
	var out []topology.Incident
	path := "/v1/incidents"
	if status != "" {
		path += "?status=" + status
	}
	return out, c.do(ctx, http.MethodGet, path, "", nil, &out)
}

// Incident returns one incident.
func (c *Client) Incident(ctx context.Context, id string) (*topology.Incident, error) {
	var out topology.Incident
	return &out, c.do(ctx, http.MethodGet, "/v1/incidents/"+id, "", nil, &out)
}

// DecideIncident acks, approves or resolves an incident.
func (c *Client) DecideIncident(ctx context.Context, id, verb, note string) (*topology.Incident, error) {
	var out topology.Incident
	return &out, c.send(ctx, http.MethodPost, "/v1/incidents/"+id+"/"+verb, IncidentAction{Note: note}, &out)
}

// ExportIncident returns an incident with its evidence bundle.
func (c *Client) ExportIncident(ctx context.Context, id string) (*IncidentExport, error) {
	var out IncidentExport
	return &out, c.do(ctx, http.MethodGet, "/v1/incidents/"+id+"/export", "", nil, &out)
}

// Signal sends a gateway's signal about a device or gateway.
func (c *Client) Signal(ctx context.Context, sub topology.Subject, req SignalRequest) (*SignalResponse, error) {
	var out SignalResponse
	return &out, c.send(ctx, http.MethodPost, "/v1/"+sub.Kind.String()+"s/"+sub.Name+"/signals", req, &out)
}

// OpenIncident opens an incident (members only). An existing unresolved
// incident of the subject comes back as an *Error with CodeIncidentExists
// and its ID as the message.
func (c *Client) OpenIncident(ctx context.Context, inc topology.Incident) error {
	return c.send(ctx, http.MethodPost, "/v1/internal/incidents", inc, nil)
}

// UpdateIncident updates an incident (members only).
func (c *Client) UpdateIncident(ctx context.Context, u raft.IncidentUpdate) error {
	return c.send(ctx, http.MethodPost, "/v1/internal/incidents/"+u.ID, u, nil)
}

// MonitorEvents forwards a batch of events to the member that owns their
// subjects (members only).
func (c *Client) MonitorEvents(ctx context.Context, body []byte) error {
	return c.do(ctx, http.MethodPost, "/v1/internal/monitor/events", "application/json", body, nil)
}

// Evidence streams a member's log lines about a subject (members only).
func (c *Client) Evidence(ctx context.Context, sub topology.Subject, since time.Time) (io.ReadCloser, error) {
	path := "/v1/internal/monitor/evidence?subject=" + sub.Kind.String() + "/" + sub.Name + "&since=" + since.UTC().Format(time.RFC3339Nano)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if err := checkCleartext(c.base); err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("vigil at %s: %w", c.base, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("vigil at %s: evidence: HTTP %d: %s", c.base, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return resp.Body, nil
}
