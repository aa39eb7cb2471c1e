package api

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

// SPIRE is what the API serves of a member's SPIRE integration. Its values
// are encoded as JSON as they are (the spire package's Token,
// SubjectAgents and Status); errors that are *Error keep their status.
type SPIRE interface {
	// Token issues a one-time join token bound to a gateway or to a
	// device of an "identity: agent" class; only the leader does.
	Token(ctx context.Context, snap *topology.Snapshot, s topology.Subject, ttl time.Duration) (any, error)
	// Agents lists every subject of kind that may run an agent, with the
	// agents bound to it.
	Agents(ctx context.Context, snap *topology.Snapshot, kind topology.Kind) (any, error)
	// Status reports the reconciler of this member.
	Status() any
}

// TokenRequest asks for a join token; TTL is a Go duration ("1h"),
// default one hour.
type TokenRequest struct {
	TTL string `json:"ttl,omitempty"`
}

// HandleSPIRE adds the SPIRE endpoints. With sp nil (the integration is
// off on this member) they answer 404 and say so.
//
//	POST /v1/gateways/{name}/token   join token for a gateway's agent (leader)
//	POST /v1/devices/{name}/token    join token for an agent-class device (leader)
//	GET  /v1/spire/agents/{gateway|device}
//	GET  /v1/spire/status
func (s *Server) HandleSPIRE(sp SPIRE) {
	s.route("POST /v1/gateways/{name}/token", s.write(s.joinToken(sp, topology.KindGateway)))
	s.route("POST /v1/devices/{name}/token", s.write(s.joinToken(sp, topology.KindDevice)))
	s.route("GET /v1/spire/agents/{kind}", func(w http.ResponseWriter, r *http.Request) error {
		if sp == nil {
			return s.spireOff()
		}
		kind, err := topology.ParseKind(r.PathValue("kind"))
		if err != nil {
			return badRequest("kind: %v", err)
		}
		snap, err := s.snapshot(w, r)
		if err != nil {
			return err
		}
		out, err := sp.Agents(r.Context(), snap, kind)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	})
	s.route("GET /v1/spire/status", func(w http.ResponseWriter, r *http.Request) error {
		if sp == nil {
			return s.spireOff()
		}
		writeJSON(w, http.StatusOK, map[string]any{"member": s.cfg.Store.ID(), "spire": sp.Status()})
		return nil
	})
}

func (s *Server) spireOff() error {
	return notFound("SPIRE integration is off on member %s (start it with --spire-socket)", s.cfg.Store.ID())
}

func (s *Server) joinToken(sp SPIRE, kind topology.Kind) writeHandler {
	return func(w http.ResponseWriter, r *http.Request, body []byte) error {
		// The leader issues tokens, so that a binding and the reconcile
		// that keeps it never run on two members at once.
		if id, addr := s.cfg.Store.Leader(); id != s.cfg.Store.ID() {
			return &raft.NotLeaderError{LeaderID: id, LeaderAddr: addr}
		}
		if sp == nil {
			return s.spireOff()
		}
		var req TokenRequest
		if err := decodeStrict(body, &req); err != nil {
			return err
		}
		var ttl time.Duration
		if req.TTL != "" {
			var err error
			if ttl, err = time.ParseDuration(req.TTL); err != nil {
				return badRequest("ttl: %v", err)
			}
		}
		sub := topology.Subject{Kind: kind, Name: r.PathValue("name")}
		tok, err := sp.Token(r.Context(), s.cfg.Store.Current(), sub, ttl)
		if err != nil {
			return err
		}
		s.cfg.Logger.Info("api: join token issued", "subject", sub.String(), "by", actorOf(r))
		writeJSON(w, http.StatusOK, tok)
		return nil
	}
}

// JoinToken asks for a one-time join token bound to a gateway, or to a
// device of an "identity: agent" class, and decodes it into out (a
// spire.Token). ttl zero is the server's default.
func (c *Client) JoinToken(ctx context.Context, kind topology.Kind, name string, ttl time.Duration, out any) error {
	req := TokenRequest{}
	if ttl > 0 {
		req.TTL = ttl.String()
	}
	return c.send(ctx, http.MethodPost, subjectPath(kind, name)+"/token", req, out)
}

// SPIREAgents lists the subjects of kind that may run an agent, with their
// agents, into out (a []spire.SubjectAgents).
func (c *Client) SPIREAgents(ctx context.Context, kind topology.Kind, out any) error {
	return c.do(ctx, http.MethodGet, "/v1/spire/agents/"+url.PathEscape(kind.String()), "", nil, out)
}

// SPIREStatus reports the answering member's SPIRE reconciler.
func (c *Client) SPIREStatus(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	return out, c.do(ctx, http.MethodGet, "/v1/spire/status", "", nil, &out)
}
