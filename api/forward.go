package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"

	"github.com/vigil-iot/vigil/raft"
)

// writeHandler handles a write with its body already read. It must write
// nothing when it returns an error.
type writeHandler func(w http.ResponseWriter, r *http.Request, body []byte) error

// write runs a write on this member if it leads, and otherwise forwards it
// to the leader. While there is no leader (an election after a failure) it
// retries until writeDeadline, unless this member is cut off from the
// quorum: then it answers at once with the partition (CodePartitioned),
// having proposed nothing. A leader that cannot be reached for
// leaderUnreachable is answered the same way when the member has meanwhile
// lost contact, or as unreachable otherwise. A forwarded request is never
// forwarded again, and a write is sent to a leader at most once: a forward
// that failed after the request went out is answered as of unknown
// outcome (CodeTimeout), since a second copy could be applied after writes
// acknowledged in between.
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
		var unreachableSince time.Time // the first failed forward of a streak
		for {
			err := h(w, r, body)
			var nl *raft.NotLeaderError
			if !errors.As(err, &nl) || forwarded {
				return err
			}
			// Cut off: the leader it may still name is out of reach, so
			// nothing is sent and nothing proposed.
			if s.cfg.Partitioned != nil {
				if perr := s.cfg.Partitioned(); perr != nil {
					return perr
				}
			}
			if nl.LeaderID == "" || nl.LeaderID == s.cfg.Store.ID() {
				unreachableSince = time.Time{} // an election: wait for its leader
			} else if m, ok := s.cfg.Store.Member(nl.LeaderID); ok && m.APIAddr != "" {
				done, sent := s.forwardWhileInContact(w, r, nl.LeaderID, m.APIAddr, body)
				if done {
					return nil
				}
				if sent {
					// The leader may have applied it: sending it again
					// could apply it a second time, after writes
					// acknowledged meanwhile (the soak saw exactly that).
					// Only the client can tell, by reading.
					return &Error{Status: http.StatusGatewayTimeout, Code: CodeTimeout,
						Message: fmt.Sprintf("the write was forwarded to the leader %s and the answer was lost (the connection failed, or the leader changed or became unreachable); it may or may not have been applied: read before retrying", nl.LeaderID)}
				}
				if unreachableSince.IsZero() {
					unreachableSince = time.Now()
				} else if time.Since(unreachableSince) > leaderUnreachable {
					return &Error{Status: http.StatusServiceUnavailable, Code: CodePartitioned,
						Message: fmt.Sprintf("member %s has not reached the leader %s's API for %s, though raft still hears from it; the write was not proposed: retry on another member, or later",
							s.cfg.Store.ID(), nl.LeaderID, leaderUnreachable)}
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

// forwardWhileInContact is forward to leader at addr, given up as soon as
// this member finds itself cut off from the quorum or follows another
// leader: a leader that a partition hides, or one stalled and already
// replaced, would otherwise hold the write until its deadline. A write
// given up after it was sent is answered as of unknown outcome, never sent
// again (see write).
func (s *Server) forwardWhileInContact(w http.ResponseWriter, r *http.Request, leader, addr string, body []byte) (done, sent bool) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if s.cfg.Partitioned != nil && s.cfg.Partitioned() != nil {
					cancel()
					return
				}
				if id, _ := s.cfg.Store.Leader(); id != "" && id != leader {
					cancel()
					return
				}
			}
		}
	}()
	return s.forward(w, r.WithContext(ctx), addr, body)
}

// leaderUnreachable is how long a follower keeps trying to forward a write
// to a leader it cannot reach before it gives up.
const leaderUnreachable = 2 * time.Second

// forward relays a write to the leader and its answer to the client. It
// reports done false, having written nothing, when the leader did not take
// the request (unreachable, or no longer leading) so that the caller
// retries; sent is then true if the request may have reached the leader
// (the connection failed after it was written), so it may have been
// applied.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, addr string, body []byte) (done, sent bool) {
	if err := checkCleartext(baseURL(addr)); err != nil {
		s.cfg.Logger.Error("api: cannot forward a write to the leader", "leader", addr, "err", err)
		return false, false
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, baseURL(addr)+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return false, false
	}
	var wrote atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { wrote.Store(true) },
	}))
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
		return false, wrote.Load()
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable {
		// The leader proposed nothing: it no longer leads, or is cut off.
		io.Copy(io.Discard, resp.Body)
		return false, false
	}
	for _, h := range []string{"Content-Type", headerRevision} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
	return true, true
}
