package api

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/vigil-iot/vigil/raft"
)

// writeHandler handles a write with its body already read. It must write
// nothing when it returns an error.
type writeHandler func(w http.ResponseWriter, r *http.Request, body []byte) error

// write runs a write on this member if it leads, and otherwise forwards it
// to the leader. While there is no leader (an election after a failure) it
// retries until writeDeadline. A forwarded request is never forwarded again.
func (s *Server) write(h writeHandler) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		limit, deadline := int64(maxRequestBytes), writeDeadline
		if r.URL.Path == "/v1/topology" {
			limit, deadline = MaxDocumentBytes, documentDeadline
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeBadRequest, Message: err.Error()}
			}
			return badRequest("reading request body: %v", err)
		}
		ctx, cancel := context.WithTimeout(r.Context(), deadline)
		defer cancel()
		r = r.WithContext(ctx)
		forwarded := r.Header.Get(headerForwarded) != ""
		retry := time.NewTicker(50 * time.Millisecond)
		defer retry.Stop()
		for {
			err := h(w, r, body)
			var nl *raft.NotLeaderError
			if !errors.As(err, &nl) || forwarded {
				return err
			}
			if nl.LeaderID != "" && nl.LeaderID != s.cfg.Store.ID() {
				if m, ok := s.cfg.Store.Member(nl.LeaderID); ok && m.APIAddr != "" {
					if s.forward(w, r, m.APIAddr, body) {
						return nil
					}
				}
			}
			select {
			case <-ctx.Done():
				return err
			case <-retry.C:
			}
		}
	}
}

// forward relays a write to the leader and its answer to the client. It
// reports false, having written nothing, when the leader could not take the
// request (unreachable, or no longer leading) so that the caller retries.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, addr string, body []byte) bool {
	if err := checkCleartext(baseURL(addr)); err != nil {
		s.cfg.Logger.Error("api: cannot forward a write to the leader", "leader", addr, "err", err)
		return false
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, baseURL(addr)+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return false
	}
	for _, h := range []string{"Authorization", "Content-Type", "Accept"} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	req.Header.Set(headerForwarded, s.cfg.Store.ID())
	// No timeout of its own: the request's context, bounded by the write's
	// deadline, bounds it.
	resp, err := s.cfg.Connector.http.Do(req)
	if err != nil {
		s.cfg.Logger.Debug("api: forward to leader failed", "leader", addr, "err", err)
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable {
		io.Copy(io.Discard, resp.Body)
		return false
	}
	for _, h := range []string{"Content-Type", headerRevision} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
	return true
}
