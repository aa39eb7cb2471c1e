package api

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vigil-iot/vigil/console"
)

// The web console: its files at /ui/ (no token: they hold nothing), login
// by one-time link, and the endpoints its pages read that the CLI does not
// need: the live decision stream, a fleet summary and paginated, searched
// lists of zones, gateways and devices that stay fast at a million devices.

// Console is what the API needs of the member's console part.
type Console interface {
	// Subscribe starts a live feed of this member's decisions.
	Subscribe(f console.Filter, buf int) (*console.Subscription, error)
}

const (
	loginLinkTTL      = 10 * time.Minute
	maxLoginLinks     = 256
	streamTick        = 100 * time.Millisecond
	streamStatsEvery  = time.Second
	streamMaxLifetime = time.Hour
	defaultStreamRate = 2000
	maxStreamRate     = 20000
	maxFilterLen      = 256

	// CodeBusy: the member serves as many live streams as it will.
	CodeBusy = "busy"
)

func (s *Server) consoleRoutes() {
	if s.cfg.Console == nil {
		return
	}
	files := console.Files()
	s.mux.Handle("GET /ui/", files)
	s.mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
	})
	s.mux.HandleFunc("POST /v1/console/login", s.consoleLogin)
	s.route("POST /v1/console/links", s.consoleLink)
	s.route("GET /v1/console/session", s.consoleSession)
	s.route("GET /v1/console/summary", s.consoleSummary)
	s.route("GET /v1/zones", s.listZones)
	s.route("GET /v1/zones/{zone}/gateways", s.listGateways)
	s.route("GET /v1/devices", s.listDevices)
	s.route("GET /v1/decisions/stream", s.decisionStream)
	s.route("GET /v1/cluster/proxies", s.clusterProxies)
}

// loginLinks holds one-time login codes. A code stands for the bearer
// token of whoever made it (so a link grants no more than its maker has),
// is used once, expires after loginLinkTTL and lives only in this member's
// memory: it must be opened at the member that made it.
type loginLinks struct {
	mu    sync.Mutex
	codes map[[32]byte]loginLink
}

type loginLink struct {
	token, actor string
	expires      time.Time
}

func (l *loginLinks) add(token, actor string, now time.Time) (string, time.Time, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.codes == nil {
		l.codes = make(map[[32]byte]loginLink)
	}
	for k, v := range l.codes {
		if !now.Before(v.expires) {
			delete(l.codes, k)
		}
	}
	if len(l.codes) >= maxLoginLinks {
		return "", time.Time{}, &Error{Status: http.StatusTooManyRequests, Code: CodeBadRequest,
			Message: fmt.Sprintf("%d login links are waiting to be used; let some expire (%s) first", maxLoginLinks, loginLinkTTL)}
	}
	var raw [32]byte
	rand.Read(raw[:])
	code := base64.RawURLEncoding.EncodeToString(raw[:])
	exp := now.Add(loginLinkTTL)
	l.codes[sha256.Sum256([]byte(code))] = loginLink{token: token, actor: actor, expires: exp}
	return code, exp, nil
}

func (l *loginLinks) take(code string, now time.Time) (loginLink, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := sha256.Sum256([]byte(code))
	v, ok := l.codes[k]
	delete(l.codes, k) // used or not, a code is tried once
	if !ok || !now.Before(v.expires) {
		return loginLink{}, false
	}
	return v, true
}

// LoginLink makes a one-time login code for the holder of token, as POST
// /v1/console/links does; the console opens /ui/#code=CODE.
func (s *Server) LoginLink(token, actor string) (string, time.Time, error) {
	return s.links.add(token, actor, s.cfg.Now())
}

// ConsoleLinkResponse answers POST /v1/console/links.
type ConsoleLinkResponse struct {
	Code      string    `json:"code"`
	Path      string    `json:"path"`
	ExpiresAt time.Time `json:"expiresAt"`
}

func (s *Server) consoleLink(w http.ResponseWriter, r *http.Request) error {
	actor := actorOf(r)
	if actor == PeerActor {
		return &Error{Status: http.StatusForbidden, Code: CodeForbidden, Message: "members cannot make console login links"}
	}
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	code, exp, err := s.LoginLink(tok, actor)
	if err != nil {
		return err
	}
	s.cfg.Logger.Info("api: console login link made", "by", actor, "expires", exp.UTC().Format(time.RFC3339))
	writeJSON(w, http.StatusOK, ConsoleLinkResponse{Code: code, Path: "/ui/#code=" + code, ExpiresAt: exp.UTC()})
	return nil
}

// ConsoleLogin is the body of POST /v1/console/login and its answer.
type ConsoleLogin struct {
	Code  string `json:"code,omitempty"`
	Token string `json:"token,omitempty"`
	Actor string `json:"actor,omitempty"`
}

func (s *Server) consoleLogin(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(r, 4096)
	var req ConsoleLogin
	if err == nil {
		err = decodeStrict(body, &req)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	l, ok := s.links.take(req.Code, s.cfg.Now())
	if !ok {
		if ok, held := s.warns.Allow("console-login", time.Now()); ok {
			s.cfg.Logger.Warn("api: console login refused: unknown, used or expired link", "remote", r.RemoteAddr, "held_back", held)
		}
		writeError(w, &Error{Status: http.StatusUnauthorized, Code: CodeUnauthenticated,
			Message: "this login link is unknown, already used or expired; make a new one with vigil console link"})
		return
	}
	s.cfg.Logger.Info("api: console login by link", "actor", l.actor, "remote", r.RemoteAddr)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, ConsoleLogin{Token: l.token, Actor: l.actor})
}

func readBody(r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, badRequest("request body: %v", err)
	}
	if int64(len(b)) > limit {
		return nil, badRequest("request body is larger than %d bytes", limit)
	}
	return b, nil
}

func (s *Server) consoleSession(w http.ResponseWriter, r *http.Request) error {
	st, _ := s.cfg.Store.Status()
	leader, _ := s.cfg.Store.Leader()
	writeJSON(w, http.StatusOK, map[string]any{"actor": actorOf(r), "member": s.cfg.Store.ID(),
		"leader": leader, "revision": s.cfg.Store.Current().Revision(), "state": st.State})
	return nil
}

// parseFilter reads a decision stream's filter from the query.
func parseFilter(r *http.Request) (console.Filter, error) {
	q := r.URL.Query()
	f := console.Filter{Device: q.Get("device"), Gateway: q.Get("gateway"), Service: q.Get("service"), Result: q.Get("result")}
	for name, v := range map[string]string{"device": f.Device, "gateway": f.Gateway, "service": f.Service} {
		if len(v) > maxFilterLen {
			return f, badRequest("%s is longer than %d bytes", name, maxFilterLen)
		}
	}
	switch f.Result {
	case "", "allow", "deny":
	default:
		return f, badRequest("result must be allow or deny, not %q", f.Result)
	}
	return f, nil
}

// StreamStats is the stats event of a decision stream, once a second:
// what matched, what was sent and what was not (a full queue, or more than
// the stream's rate), at this member and at each peer streamed from.
type StreamStats struct {
	Member  string       `json:"member"`
	Matched uint64       `json:"matched"`
	Sent    uint64       `json:"sent"`
	Dropped uint64       `json:"dropped"`
	Skipped uint64       `json:"skipped"`
	Rate    int          `json:"maxRate"`
	Peers   []StreamPeer `json:"peers,omitempty"`
}

// StreamPeer is the state of the stream from another member.
type StreamPeer struct {
	Member    string `json:"member"`
	Connected bool   `json:"connected"`
	Received  uint64 `json:"received"`
	Error     string `json:"error,omitempty"`
}

// decisionStream serves GET /v1/decisions/stream as server-sent events:
// "decision" events (console.Decision) and a "stats" event each second.
// By default it merges the streams of every member (with scope=member,
// this member's only), filtered at the source. At most rate decisions a
// second are sent (default 2,000); the rest are counted as skipped, so a
// browser is never flooded and authz never waits.
func (s *Server) decisionStream(w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilter(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	rate := defaultStreamRate
	if v := q.Get("rate"); v != "" {
		if rate, err = strconv.Atoi(v); err != nil || rate < 1 || rate > maxStreamRate {
			return badRequest("rate must be a number from 1 to %d", maxStreamRate)
		}
	}
	scope := q.Get("scope")
	switch scope {
	case "", "cluster", "member":
	default:
		return badRequest("scope must be cluster or member, not %q", scope)
	}
	sub, err := s.cfg.Console.Subscribe(f, 8192)
	if errors.Is(err, console.ErrTooMany) {
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeBusy, Message: err.Error()}
	}
	if err != nil {
		return err
	}
	defer sub.Close()

	ctx, cancel := context.WithTimeout(r.Context(), streamMaxLifetime)
	defer cancel()
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	fmt.Fprintf(bw, "retry: 2000\n: decisions of %s\n\n", s.cfg.Store.ID())
	bw.Flush()
	rc.Flush()

	var peers *peerStreams
	if scope != "member" && actorOf(r) != PeerActor {
		peers = s.streamPeers(ctx, f, rate)
	}
	enc := json.NewEncoder(bw)
	st := StreamStats{Member: s.cfg.Store.ID(), Rate: rate}
	// Each tick may send its share of the rate, so that every second (ten
	// ticks) sends at most rate, also below ten a second.
	ticksPerSecond, nTick := int(time.Second/streamTick), 0
	tick := time.NewTicker(streamTick)
	defer tick.Stop()
	lastStats := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return nil
		case <-tick.C:
		}
		budget := rate*(nTick+1)/ticksPerSecond - rate*nTick/ticksPerSecond
		nTick = (nTick + 1) % ticksPerSecond
		send := func(d *console.Decision) {
			if budget <= 0 {
				st.Skipped++
				return
			}
			budget--
			st.Sent++
			if d.Member == "" {
				d.Member = st.Member
			}
			bw.WriteString("event: decision\ndata: ")
			enc.Encode(d) // ends with the newline that ends the data line
			bw.WriteString("\n")
		}
	drain:
		for i := 0; i < 4*maxStreamRate/10; i++ {
			select {
			case d := <-sub.C():
				send(&d)
			default:
				break drain
			}
		}
		if peers != nil {
			peers.drain(send)
		}
		if time.Since(lastStats) >= streamStatsEvery {
			lastStats = time.Now()
			st.Matched, st.Dropped = sub.Matched(), sub.Dropped()
			if peers != nil {
				st.Peers = peers.status()
			}
			bw.WriteString("event: stats\ndata: ")
			enc.Encode(&st)
			bw.WriteString("\n")
		}
		if bw.Buffered() > 0 {
			if err := bw.Flush(); err != nil {
				return nil // the browser went away
			}
			if err := rc.Flush(); err != nil {
				return nil
			}
		}
	}
}

// peerStreams reads the decision streams of the other members (scope
// member, the same filter, with the peer token) into one queue.
type peerStreams struct {
	c     chan console.Decision
	mu    sync.Mutex
	peers map[string]*StreamPeer
}

func (s *Server) streamPeers(ctx context.Context, f console.Filter, rate int) *peerStreams {
	st, err := s.cfg.Store.Status()
	if err != nil {
		return nil
	}
	p := &peerStreams{c: make(chan console.Decision, 8192), peers: map[string]*StreamPeer{}}
	for _, m := range st.Members {
		if m.ID == st.ID {
			continue
		}
		p.peers[m.ID] = &StreamPeer{Member: m.ID}
		go s.followPeer(ctx, p, m.ID, m.APIAddr, f, rate)
	}
	if len(p.peers) == 0 {
		return nil
	}
	return p
}

func (p *peerStreams) drain(send func(*console.Decision)) {
	for i := 0; i < 4*maxStreamRate/10; i++ {
		select {
		case d := <-p.c:
			send(&d)
		default:
			return
		}
	}
}

func (p *peerStreams) status() []StreamPeer {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]StreamPeer, 0, len(p.peers))
	for _, sp := range p.peers {
		out = append(out, *sp)
	}
	slices.SortFunc(out, func(a, b StreamPeer) int { return strings.Compare(a.Member, b.Member) })
	return out
}

func (p *peerStreams) set(id string, fn func(*StreamPeer)) {
	p.mu.Lock()
	fn(p.peers[id])
	p.mu.Unlock()
}

// followPeer streams one member's decisions until ctx ends, reconnecting
// after a second when the stream breaks.
func (s *Server) followPeer(ctx context.Context, p *peerStreams, id, addr string, f console.Filter, rate int) {
	for ctx.Err() == nil {
		err := s.readPeerStream(ctx, p, id, addr, f, rate)
		if ctx.Err() != nil {
			return
		}
		p.set(id, func(sp *StreamPeer) {
			sp.Connected = false
			if err != nil {
				sp.Error = err.Error()
			}
		})
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *Server) readPeerStream(ctx context.Context, p *peerStreams, id, addr string, f console.Filter, rate int) error {
	if addr == "" {
		return errors.New("member has not registered its API address")
	}
	base := baseURL(addr)
	if err := checkCleartext(base); err != nil {
		return err
	}
	q := make([]string, 0, 5)
	for k, v := range map[string]string{"device": f.Device, "gateway": f.Gateway, "service": f.Service, "result": f.Result} {
		if v != "" {
			q = append(q, k+"="+url.QueryEscape(v))
		}
	}
	q = append(q, "scope=member", "rate="+strconv.Itoa(rate))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/decisions/stream?"+strings.Join(q, "&"), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+s.cfg.PeerToken)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := (&http.Client{Transport: s.cfg.Connector.http.Transport}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", id, resp.Status)
	}
	p.set(id, func(sp *StreamPeer) { sp.Connected, sp.Error = true, "" })
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			event = ""
		case strings.HasPrefix(line, "event: "):
			event = line[len("event: "):]
		case strings.HasPrefix(line, "data: ") && event == "decision":
			var d console.Decision
			if json.Unmarshal([]byte(line[len("data: "):]), &d) != nil {
				continue
			}
			if d.Member == "" {
				d.Member = id
			}
			select {
			case p.c <- d:
				p.set(id, func(sp *StreamPeer) { sp.Received++ })
			default:
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("stream ended")
}
