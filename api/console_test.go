package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/vigil-iot/vigil/console"
	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

const bobToken = "bob-token-0123456789abcdefghijkl"

// testClock is a ServerConfig.Now that tests move by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newTestClock() *testClock {
	return &testClock{now: time.Date(2030, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// hubConsole is the Console a node serves: a console.Hub, counting the
// streams it was asked for.
type hubConsole struct {
	hub        *console.Hub
	subscribes atomic.Int32
}

func (c *hubConsole) Subscribe(f console.Filter, buf int) (*console.Subscription, error) {
	c.subscribes.Add(1)
	return c.hub.Subscribe(f, buf)
}

type consoleMember struct {
	store *raft.Store
	srv   *httptest.Server
	api   *Server
	hub   *console.Hub
}

// consoleOpts sets up startConsoleMembers' members.
type consoleOpts struct {
	clock     *testClock // nil: the real clock
	noConsole bool
	xds       func(i int) XDS // nil: no xDS
}

// startConsoleMembers is startMembers with a console (a hub) per member,
// tokens for alice and bob, and the options' clock and xDS.
func startConsoleMembers(t *testing.T, n int, o consoleOpts) []*consoleMember {
	t.Helper()
	tokens, err := ParseTokens([]byte(testToken + "\nbob:" + bobToken + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	tokens.add(PeerActor, PeerToken(clusterKey))
	var members []*consoleMember
	var trans []*hraft.InmemTransport
	for i := range n {
		id := fmt.Sprintf("m%d", i+1)
		_, tr := hraft.NewInmemTransport(hraft.ServerAddress(id))
		for _, other := range trans {
			tr.Connect(other.LocalAddr(), other)
			other.Connect(tr.LocalAddr(), tr)
		}
		trans = append(trans, tr)
		s, err := raft.Open(raft.Config{
			ID: id, DataDir: t.TempDir(), Transport: tr, Bootstrap: i == 0, Logger: quiet(), RaftLogLevel: "off",
			HeartbeatTimeout: 250 * time.Millisecond, ElectionTimeout: 250 * time.Millisecond, LeaderLeaseTimeout: 125 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		m := &consoleMember{store: s, hub: &console.Hub{}}
		cfg := ServerConfig{Store: s, Tokens: tokens, PeerToken: PeerToken(clusterKey), Logger: quiet()}
		if !o.noConsole {
			cfg.Console = &hubConsole{hub: m.hub}
		}
		if o.clock != nil {
			cfg.Now = o.clock.Now
		}
		if o.xds != nil {
			cfg.XDS = o.xds(i)
		}
		m.api = NewServer(cfg)
		m.srv = httptest.NewServer(m.api)
		t.Cleanup(func() { m.srv.Close(); s.Close() })
		members = append(members, m)
	}
	ctx := testCtx(t)
	leader := members[0].store
	for !leader.IsLeader() {
		time.Sleep(10 * time.Millisecond)
	}
	for _, m := range members {
		reg := raft.Member{ID: m.store.ID(), RaftAddr: m.store.Addr(), APIAddr: m.srv.Listener.Addr().String()}
		if m.store == leader {
			err = leader.RegisterMember(ctx, reg)
		} else {
			err = leader.AddVoter(ctx, reg)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return members
}

// call makes a request and decodes a 2xx JSON answer into out; it returns
// the status and the body.
func call(t *testing.T, method, u, token, body string, out any) (int, []byte) {
	t.Helper()
	status, _, data := callH(t, method, u, token, body, out)
	return status, data
}

func callH(t *testing.T, method, u, token, body string, out any) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil && resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decoding %q: %v", method, u, data, err)
		}
	}
	return resp.StatusCode, resp.Header, data
}

func errorOf(t *testing.T, data []byte) Error {
	t.Helper()
	var e Error
	if err := json.Unmarshal(data, &e); err != nil {
		t.Fatalf("error body %q: %v", data, err)
	}
	return e
}

// ---------- login links ----------

func TestConsoleLoginLinks(t *testing.T) {
	clock := newTestClock()
	m := startConsoleMembers(t, 1, consoleOpts{clock: clock})[0]
	base := m.srv.URL

	link := func(token string) ConsoleLinkResponse {
		t.Helper()
		var l ConsoleLinkResponse
		if st, body := call(t, "POST", base+"/v1/console/links", token, "", &l); st != 200 {
			t.Fatalf("make a link: %d %s", st, body)
		}
		return l
	}
	login := func(code string) (int, ConsoleLogin, []byte) {
		t.Helper()
		var out ConsoleLogin
		body, _ := json.Marshal(ConsoleLogin{Code: code})
		st, h, data := callH(t, "POST", base+"/v1/console/login", "", string(body), &out)
		if st == 200 && h.Get("Cache-Control") != "no-store" {
			t.Errorf("a login answer (holding a token) may be cached: Cache-Control %q", h.Get("Cache-Control"))
		}
		return st, out, data
	}

	// A link stands for the token that made it, once.
	l := link(aliceToken)
	if l.Code == "" || l.Path != "/ui/#code="+l.Code || !l.ExpiresAt.Equal(clock.Now().Add(10*time.Minute)) {
		t.Fatalf("link %+v", l)
	}
	if len(l.Code) < 40 || strings.ContainsAny(l.Code, "+/=") {
		t.Errorf("code %q is short or not URL-safe", l.Code)
	}
	st, got, _ := login(l.Code)
	if st != 200 || got.Token != aliceToken || got.Actor != "alice" || got.Code != "" {
		t.Fatalf("login: %d %+v", st, got)
	}
	st, _, data := login(l.Code)
	if e := errorOf(t, data); st != 401 || e.Code != CodeUnauthenticated || !strings.Contains(e.Message, "used or expired") {
		t.Fatalf("second use: %d %+v", st, e)
	}
	lb := link(bobToken)
	if st, got, _ := login(lb.Code); st != 200 || got.Token != bobToken || got.Actor != "bob" {
		t.Fatalf("bob's link: %d %+v", st, got)
	}

	// Unknown and empty codes.
	for _, code := range []string{"nope", "", strings.Repeat("A", 43)} {
		if st, _, _ := login(code); st != 401 {
			t.Errorf("code %q: %d, want 401", code, st)
		}
	}

	// Expiry: still good just before ten minutes, refused at and after.
	l1, l2, l3 := link(aliceToken), link(aliceToken), link(aliceToken)
	clock.Advance(10*time.Minute - time.Second)
	if st, _, _ := login(l1.Code); st != 200 {
		t.Errorf("a link 9m59s old: %d, want 200", st)
	}
	clock.Advance(time.Second)
	if st, _, _ := login(l2.Code); st != 401 {
		t.Errorf("a link 10m old: %d, want 401", st)
	}
	clock.Advance(time.Hour)
	if st, _, _ := login(l3.Code); st != 401 {
		t.Errorf("a link 70m old: %d, want 401", st)
	}

	// Who may make links.
	st, data = call(t, "POST", base+"/v1/console/links", PeerToken(clusterKey), "", nil)
	if e := errorOf(t, data); st != 403 || e.Code != CodeForbidden {
		t.Errorf("the peer token made a link: %d %s", st, data)
	}
	if st, _ = call(t, "POST", base+"/v1/console/links", "", "", nil); st != 401 {
		t.Errorf("no token: %d, want 401", st)
	}
	if st, _ = call(t, "POST", base+"/v1/console/links", "wrong-token-wrong-token-wrong", "", nil); st != 401 {
		t.Errorf("a wrong token: %d, want 401", st)
	}
	// The client makes links too.
	if cl, err := NewClient(base, aliceToken).ConsoleLink(testCtx(t)); err != nil || cl.Code == "" {
		t.Errorf("Client.ConsoleLink: %+v %v", cl, err)
	}

	// Bodies: unknown fields, more than 4096 bytes, not JSON: 400, and the
	// code in a refused body is not spent.
	l = link(aliceToken)
	for name, body := range map[string]string{
		"unknown field": `{"code":"` + l.Code + `","token":"x","admin":true}`,
		"too large":     `{"code":"` + l.Code + `","actor":"` + strings.Repeat("x", 4096) + `"}`,
		"not JSON":      `code=` + l.Code,
		"wrong type":    `{"code":42}`,
	} {
		st, data := call(t, "POST", base+"/v1/console/login", "", body, nil)
		if e := errorOf(t, data); st != 400 || e.Code != CodeBadRequest {
			t.Errorf("%s: %d %s, want 400", name, st, data)
		}
	}
	if st, got, _ := login(l.Code); st != 200 || got.Token != aliceToken {
		t.Errorf("the code was spent by a refused request: %d", st)
	}
	// Exactly 4096 bytes is accepted (and the code unknown).
	pad := `{"code":"x","actor":"` + strings.Repeat("y", 4096-len(`{"code":"x","actor":""}`)) + `"}`
	if len(pad) != 4096 {
		t.Fatalf("pad is %d bytes", len(pad))
	}
	if st, _ = call(t, "POST", base+"/v1/console/login", "", pad, nil); st != 401 {
		t.Errorf("a 4096-byte body: %d, want 401", st)
	}

	// At most 256 outstanding links; expired ones make room.
	clock.Advance(time.Hour) // every link so far has expired
	for i := range maxLoginLinks {
		if st, data := call(t, "POST", base+"/v1/console/links", aliceToken, "", nil); st != 200 {
			t.Fatalf("link %d: %d %s", i+1, st, data)
		}
	}
	st, data = call(t, "POST", base+"/v1/console/links", aliceToken, "", nil)
	if st != http.StatusTooManyRequests {
		t.Fatalf("link %d: %d %s, want 429", maxLoginLinks+1, st, data)
	}
	clock.Advance(loginLinkTTL)
	l = link(aliceToken)
	if st, got, _ := login(l.Code); st != 200 || got.Actor != "alice" {
		t.Fatalf("after expiry made room: %d", st)
	}
}

func TestConsoleSession(t *testing.T) {
	m := startConsoleMembers(t, 1, consoleOpts{})[0]
	var s struct {
		Actor, Member, Leader, State string
		Revision                     topology.Revision
	}
	if st, data := call(t, "GET", m.srv.URL+"/v1/console/session", bobToken, "", &s); st != 200 {
		t.Fatalf("session: %d %s", st, data)
	}
	if s.Actor != "bob" || s.Member != "m1" || s.Leader != "m1" || s.State != "Leader" {
		t.Fatalf("session %+v", s)
	}
	if st, _ := call(t, "GET", m.srv.URL+"/v1/console/session", "", "", nil); st != 401 {
		t.Fatalf("session without a token: %d", st)
	}
}

func TestConsoleFilesOnlyWithAConsole(t *testing.T) {
	ms := startConsoleMembers(t, 1, consoleOpts{noConsole: true})
	without := ms[0].srv.URL
	for _, p := range []string{"/ui/", "/ui/app.js", "/ui"} {
		if st, _ := call(t, "GET", without+p, "", "", nil); st != 404 {
			t.Errorf("no console: GET %s = %d, want 404", p, st)
		}
	}
	for _, p := range []string{"/v1/console/links", "/v1/console/login"} {
		if st, _ := call(t, "POST", without+p, aliceToken, "{}", nil); st != 404 {
			t.Errorf("no console: POST %s = %d, want 404", p, st)
		}
	}
	for _, p := range []string{"/v1/decisions/stream", "/v1/devices", "/v1/zones", "/v1/console/summary", "/v1/console/session"} {
		if st, _ := call(t, "GET", without+p, aliceToken, "", nil); st != 404 {
			t.Errorf("no console: GET %s = %d, want 404", p, st)
		}
	}

	with := startConsoleMembers(t, 1, consoleOpts{})[0].srv.URL
	st, h, body := callH(t, "GET", with+"/ui/", "", "", nil)
	if st != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/html") || !strings.Contains(string(body), "Vigil console") ||
		!strings.Contains(h.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatalf("GET /ui/ without a token: %d %q", st, h.Get("Content-Type"))
	}
	if st, h, _ := callH(t, "GET", with+"/ui/app.js", "", "", nil); st != 200 || !strings.Contains(h.Get("Content-Type"), "javascript") {
		t.Errorf("GET /ui/app.js: %d %q", st, h.Get("Content-Type"))
	}
	// /ui redirects to /ui/.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(with + "/ui")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/ui/" {
		t.Errorf("GET /ui: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// Path tricks end at no file of the module.
	for _, p := range []string{"/ui/../go.mod", "/ui/%2e%2e/go.mod", "/ui/..%2fgo.mod", "/ui/web/app.js", "/ui/%2e%2e/api/console.go"} {
		st, body := call(t, "GET", with+p, "", "", nil)
		if st == 200 || bytes.Contains(body, []byte("module github.com")) || bytes.Contains(body, []byte("package api")) {
			t.Errorf("GET %s: %d %.80q", p, st, body)
		}
	}
	// Only GET and HEAD.
	if st, _ := call(t, "POST", with+"/ui/", "", "x", nil); st == 200 {
		t.Errorf("POST /ui/: %d", st)
	}
}

// ---------- decision stream ----------

type sseEvent struct{ event, data string }

// openStream opens a decision stream and reads its events into a channel,
// until ctx ends.
func openStream(t *testing.T, ctx context.Context, base, query, token string) <-chan sseEvent {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", base+"/v1/decisions/stream?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("stream ?%s: %d %s", query, resp.StatusCode, data)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("stream Content-Type %q Cache-Control %q", ct, resp.Header.Get("Cache-Control"))
	}
	ch := make(chan sseEvent, 4096)
	go func() {
		defer resp.Body.Close()
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.data != "" {
					select {
					case ch <- ev:
					case <-ctx.Done():
						return
					}
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "event: "):
				ev.event = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				if ev.data != "" {
					ev.data += "\n"
				}
				ev.data += line[len("data: "):]
			}
		}
	}()
	return ch
}

func decodeDecision(t *testing.T, data string) console.Decision {
	t.Helper()
	var d console.Decision
	dec := json.NewDecoder(strings.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("decision %q: %v", data, err)
	}
	return d
}

func decodeStats(t *testing.T, data string) StreamStats {
	t.Helper()
	var s StreamStats
	dec := json.NewDecoder(strings.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("stats %q: %v", data, err)
	}
	return s
}

// collect reads events for d: the decisions and the last stats.
func collect(t *testing.T, ch <-chan sseEvent, d time.Duration) (decisions []console.Decision, stats *StreamStats) {
	t.Helper()
	end := time.After(d)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return
			}
			switch ev.event {
			case "decision":
				decisions = append(decisions, decodeDecision(t, ev.data))
			case "stats":
				s := decodeStats(t, ev.data)
				stats = &s
			default:
				t.Errorf("unexpected event %q: %q", ev.event, ev.data)
			}
		case <-end:
			return
		}
	}
}

// nextStats waits (bounded) for the next stats event, keeping the
// decisions seen meanwhile.
func nextStats(t *testing.T, ch <-chan sseEvent, within time.Duration) (StreamStats, []console.Decision) {
	t.Helper()
	var ds []console.Decision
	end := time.After(within)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("the stream ended")
			}
			if ev.event == "decision" {
				ds = append(ds, decodeDecision(t, ev.data))
				continue
			}
			if ev.event == "stats" {
				return decodeStats(t, ev.data), ds
			}
		case <-end:
			t.Fatalf("no stats event within %v", within)
		}
	}
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDecisionStreamSendsMatchingDecisionsAndStats(t *testing.T) {
	m := startConsoleMembers(t, 1, consoleOpts{})[0]
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	opened := time.Now()
	ch := openStream(t, ctx, m.srv.URL, "scope=member&device=d-1", aliceToken)
	waitFor(t, "subscribed", 2*time.Second, func() bool { return m.hub.Subscribers() == 1 })

	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, d := range []console.Decision{
		{At: at, ID: "1", Subject: "d-1", Kind: "device", Gateway: "gw-1", Service: "telemetry", Method: "POST", Path: "/api/v1/telemetry", Allowed: true, Flow: "t"},
		{At: at, ID: "2", Subject: "d-2", Kind: "device", Allowed: true},
		{At: at, ID: "3", Subject: "d-1", Kind: "gateway", Allowed: true},
		{At: at, ID: "4", Subject: "d-1", Kind: "device", Allowed: false, Cause: "quarantined", Reason: "tamper </script><b>x</b>\nline"},
		{At: at, ID: "5", Subject: "d-1", Kind: "device", Allowed: true, Member: "elsewhere"},
	} {
		m.hub.Publish(&d)
	}
	st, ds := nextStats(t, ch, 3*time.Second)
	if since := time.Since(opened); since > 1500*time.Millisecond {
		t.Errorf("first stats after %v", since)
	}
	if len(ds) < 3 {
		more, _ := collect(t, ch, 300*time.Millisecond)
		ds = append(ds, more...)
	}
	var ids []string
	for _, d := range ds {
		ids = append(ids, d.ID)
	}
	if fmt.Sprint(ids) != "[1 4 5]" {
		t.Fatalf("decisions %v, want [1 4 5]", ids)
	}
	if d := ds[0]; d.Member != "m1" || !d.At.Equal(at) || d.Gateway != "gw-1" || d.Path != "/api/v1/telemetry" || !d.Allowed {
		t.Errorf("decision 1 as sent: %+v", d)
	}
	if d := ds[1]; d.Reason != "tamper </script><b>x</b>\nline" || d.Cause != "quarantined" || d.Allowed {
		t.Errorf("decision 4 as sent: %+v", d)
	}
	if ds[2].Member != "elsewhere" {
		t.Errorf("a decision's own member was replaced: %q", ds[2].Member)
	}
	if st.Member != "m1" || st.Rate != defaultStreamRate || st.Peers != nil {
		t.Errorf("stats %+v", st)
	}
	if st.Matched != 3 || st.Sent != 3 || st.Dropped != 0 || st.Skipped != 0 {
		// The decisions may have reached the stream after the first stats.
		st, _ = nextStats(t, ch, 3*time.Second)
		if st.Matched != 3 || st.Sent != 3 || st.Dropped != 0 || st.Skipped != 0 {
			t.Errorf("stats %+v, want 3 matched and sent", st)
		}
	}
	// Stats keep coming, about once a second.
	t0 := time.Now()
	nextStats(t, ch, 3*time.Second)
	if d := time.Since(t0); d < 500*time.Millisecond {
		t.Errorf("stats again after %v", d)
	}

	// Closing the client ends the handler and its subscription.
	cancel()
	waitFor(t, "unsubscribed after the client left", 2*time.Second, func() bool { return m.hub.Subscribers() == 0 })
}

func TestDecisionStreamRate(t *testing.T) {
	m := startConsoleMembers(t, 1, consoleOpts{})[0]

	t.Run("burst", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testCtx(t))
		defer cancel()
		ch := openStream(t, ctx, m.srv.URL, "scope=member&rate=10", aliceToken)
		waitFor(t, "subscribed", 2*time.Second, func() bool { return m.hub.Subscribers() == 1 })
		for i := range 200 {
			m.hub.Publish(&console.Decision{ID: fmt.Sprint(i), Subject: "d-1", Kind: "device", Allowed: true})
		}
		start := time.Now()
		ds, _ := collect(t, ch, time.Second)
		if len(ds) > 12 {
			t.Errorf("rate=10: %d decisions sent within %v of a burst of 200", len(ds), time.Since(start))
		}
		st, more := nextStats(t, ch, 3*time.Second)
		sent := len(ds) + len(more)
		if st.Rate != 10 || st.Matched != 200 || st.Dropped != 0 || st.Sent+st.Skipped != 200 || st.Sent < uint64(sent) || st.Skipped < 200-12-10 {
			t.Errorf("stats %+v after %d received", st, sent)
		}
		cancel()
		waitFor(t, "unsubscribed", 2*time.Second, func() bool { return m.hub.Subscribers() == 0 })
	})

	// A steady flow is sent at the rate asked, no faster, even below 10 a
	// second (one decision a tick would be 10 a second).
	for _, tc := range []struct{ rate, min, max int }{{1, 1, 4}, {5, 6, 14}, {15, 20, 36}, {30, 45, 66}} {
		t.Run(fmt.Sprintf("steady-%d", tc.rate), func(t *testing.T) {
			ctx, cancel := context.WithCancel(testCtx(t))
			defer cancel()
			ch := openStream(t, ctx, m.srv.URL, fmt.Sprintf("scope=member&rate=%d", tc.rate), aliceToken)
			waitFor(t, "subscribed", 2*time.Second, func() bool { return m.hub.Subscribers() == 1 })
			done := make(chan struct{})
			go func() {
				defer close(done)
				tk := time.NewTicker(5 * time.Millisecond)
				defer tk.Stop()
				for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
					<-tk.C
					m.hub.Publish(&console.Decision{Subject: "d-1", Kind: "device", Allowed: true})
				}
			}()
			ds, _ := collect(t, ch, 2*time.Second)
			<-done
			if len(ds) < tc.min || len(ds) > tc.max {
				t.Errorf("rate=%d over 2 s: %d decisions sent, want %d to %d", tc.rate, len(ds), tc.min, tc.max)
			}
			cancel()
			waitFor(t, "unsubscribed", 2*time.Second, func() bool { return m.hub.Subscribers() == 0 })
		})
	}
}

func TestDecisionStreamRefusesBadRequests(t *testing.T) {
	m := startConsoleMembers(t, 1, consoleOpts{})[0]
	cons := m.api.cfg.Console.(*hubConsole)
	long := strings.Repeat("d", 300)
	for _, q := range []string{
		"result=maybe", "result=ALLOW", "rate=0", "rate=-5", "rate=999999", "rate=20001", "rate=ten", "rate=1.5",
		"scope=x", "scope=Member", "device=" + long, "gateway=" + long, "service=" + long,
	} {
		st, data := call(t, "GET", m.srv.URL+"/v1/decisions/stream?"+q, aliceToken, "", nil)
		if e := errorOf(t, data); st != 400 || e.Code != CodeBadRequest {
			t.Errorf("?%.40s: %d %s, want 400", q, st, data)
		}
	}
	if n := cons.subscribes.Load(); n != 0 {
		t.Errorf("refused requests subscribed %d times", n)
	}
	if st, _ := call(t, "GET", m.srv.URL+"/v1/decisions/stream", "", "", nil); st != 401 {
		t.Errorf("no token: %d", st)
	}
	// 256 bytes are allowed; rate 20000 is.
	ctx, cancel := context.WithCancel(testCtx(t))
	openStream(t, ctx, m.srv.URL, "scope=member&rate=20000&device="+strings.Repeat("d", 256), aliceToken)
	waitFor(t, "subscribed", 2*time.Second, func() bool { return m.hub.Subscribers() == 1 })
	cancel()
	waitFor(t, "unsubscribed", 2*time.Second, func() bool { return m.hub.Subscribers() == 0 })

	// Past the hub's bound: 503, busy, retry.
	var subs []*console.Subscription
	for range console.MaxSubscribers {
		s, err := m.hub.Subscribe(console.Filter{}, 1)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	st, h, data := callH(t, "GET", m.srv.URL+"/v1/decisions/stream?scope=member", aliceToken, "", nil)
	if e := errorOf(t, data); st != 503 || e.Code != CodeBusy || h.Get("Retry-After") == "" {
		t.Errorf("past the bound: %d %s", st, data)
	}
	for _, s := range subs {
		s.Close()
	}
}

// TestDecisionStreamFansInFromPeers: the default stream of one member
// carries the decisions of the others, read with the peer token, each
// marked with the member that decided; the stats name the peers.
func TestDecisionStreamFansInFromPeers(t *testing.T) {
	ms := startConsoleMembers(t, 2, consoleOpts{})
	m1, m2 := ms[0], ms[1]
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	ch := openStream(t, ctx, m1.srv.URL, "device=d-1&result=deny", aliceToken)
	waitFor(t, "subscribed here and at the peer", 5*time.Second, func() bool {
		return m1.hub.Subscribers() == 1 && m2.hub.Subscribers() == 1
	})
	m2.hub.Publish(&console.Decision{ID: "p1", Subject: "d-1", Kind: "device", Allowed: false, Cause: "no-flow"})
	m2.hub.Publish(&console.Decision{ID: "p2", Subject: "d-1", Kind: "device", Allowed: true}) // filtered at the peer
	m2.hub.Publish(&console.Decision{ID: "p3", Subject: "d-2", Kind: "device", Allowed: false})
	m1.hub.Publish(&console.Decision{ID: "l1", Subject: "d-1", Kind: "device", Allowed: false})

	got := map[string]string{}
	var stats *StreamStats
	deadline := time.After(5 * time.Second)
	for len(got) < 2 || stats == nil || len(stats.Peers) != 1 || !stats.Peers[0].Connected || stats.Peers[0].Received < 1 {
		select {
		case ev := <-ch:
			switch ev.event {
			case "decision":
				d := decodeDecision(t, ev.data)
				got[d.ID] = d.Member
			case "stats":
				s := decodeStats(t, ev.data)
				stats = &s
			}
		case <-deadline:
			t.Fatalf("decisions %v, stats %+v", got, stats)
		}
	}
	if len(got) != 2 || got["p1"] != "m2" || got["l1"] != "m1" {
		t.Fatalf("decisions (id: member) %v, want p1 from m2 and l1 from m1", got)
	}
	if p := stats.Peers[0]; p.Member != "m2" || p.Error != "" {
		t.Errorf("peer %+v", p)
	}
	// The peer streams its own decisions only: it opened no stream back.
	if n := m1.hub.Subscribers(); n != 1 {
		t.Errorf("m1 has %d subscribers, want 1 (the peer must not fan in again)", n)
	}
	// A broken peer stream is followed again a second later.
	m2.srv.CloseClientConnections()
	waitFor(t, "the peer's stream ended", time.Second, func() bool { return m2.hub.Subscribers() == 0 })
	waitFor(t, "the peer followed again", 5*time.Second, func() bool { return m2.hub.Subscribers() == 1 })
	m2.hub.Publish(&console.Decision{ID: "p4", Subject: "d-1", Kind: "device", Allowed: false})
	deadline = time.After(5 * time.Second)
	for got["p4"] == "" {
		select {
		case ev := <-ch:
			if ev.event == "decision" {
				d := decodeDecision(t, ev.data)
				got[d.ID] = d.Member
			}
		case <-deadline:
			t.Fatal("no decision from the peer after it was followed again")
		}
	}
	if got["p4"] != "m2" {
		t.Errorf("p4 from %q", got["p4"])
	}
	// Closing the client closes both.
	cancel()
	waitFor(t, "both unsubscribed", 3*time.Second, func() bool {
		return m1.hub.Subscribers() == 0 && m2.hub.Subscribers() == 0
	})

	// scope=member: no peer.
	ctx2, cancel2 := context.WithCancel(testCtx(t))
	defer cancel2()
	ch = openStream(t, ctx2, m1.srv.URL, "scope=member", aliceToken)
	st, _ := nextStats(t, ch, 3*time.Second)
	if st.Peers != nil || m2.hub.Subscribers() != 0 {
		t.Errorf("scope=member streamed from peers: %+v, m2 has %d subscribers", st.Peers, m2.hub.Subscribers())
	}
	cancel2()

	// Proxies of every member: neither serves xDS here, and both say so.
	var px ProxyPage
	if st, data := call(t, "GET", m1.srv.URL+"/v1/cluster/proxies", aliceToken, "", &px); st != 200 {
		t.Fatalf("proxies: %d %s", st, data)
	}
	if px.AnsweredBy != "m1" || px.Total != 0 || px.Proxies == nil || len(px.Errors) != 2 || px.Errors[0].Member != "m1" || px.Errors[1].Member != "m2" ||
		!strings.Contains(px.Errors[0].Error, "no xDS") || !strings.Contains(px.Errors[1].Error, "no xDS") {
		t.Errorf("proxies %+v", px)
	}
	// A peer that is down is reported as such. (httptest's Close would
	// wait for the open stream: stop listening, then cut it.)
	ctx3, cancel3 := context.WithCancel(testCtx(t))
	defer cancel3()
	ch = openStream(t, ctx3, m1.srv.URL, "", aliceToken)
	waitFor(t, "the peer followed", 5*time.Second, func() bool { return m2.hub.Subscribers() == 1 })
	m2.srv.Listener.Close()
	m2.srv.CloseClientConnections()
	deadline = time.After(5 * time.Second)
	for down := false; !down; {
		select {
		case ev := <-ch:
			if ev.event == "stats" {
				s := decodeStats(t, ev.data)
				down = len(s.Peers) == 1 && s.Peers[0].Member == "m2" && !s.Peers[0].Connected && s.Peers[0].Error != ""
			}
		case <-deadline:
			t.Fatal("the peer that is down is not reported")
		}
	}
}

// fakeXDS reports a fixed list of proxies.
type fakeXDS struct{ proxies []fakeProxy }

type fakeNack struct{ Version, Message string }

type fakeProxy struct {
	NodeID    string
	Connected bool
	Types     []struct {
		TypeURL string
		Nack    *fakeNack
	}
}

func proxy(node string, nack bool) fakeProxy {
	p := fakeProxy{NodeID: node, Connected: true}
	p.Types = make([]struct {
		TypeURL string
		Nack    *fakeNack
	}, 2)
	p.Types[0].TypeURL, p.Types[1].TypeURL = "listener", "cluster"
	if nack {
		p.Types[1].Nack = &fakeNack{Version: "7", Message: "bad"}
	}
	return p
}

func (f *fakeXDS) ProxyStatus() any                          { return f.proxies }
func (f *fakeXDS) Dump(string, string, bool) ([]byte, error) { return nil, nil }

// TestClusterProxies: one sorted, filtered page of the proxies of every
// member.
func TestClusterProxies(t *testing.T) {
	xdss := []*fakeXDS{
		{proxies: []fakeProxy{proxy("gw-b", true), proxy("gw-a", false), proxy("gw-d", false)}},
		{proxies: []fakeProxy{proxy("gw-c", false), proxy("gw-a2", true)}},
	}
	ms := startConsoleMembers(t, 2, consoleOpts{xds: func(i int) XDS { return xdss[i] }})
	get := func(q string) ProxyPage {
		t.Helper()
		var out ProxyPage
		if st, data := call(t, "GET", ms[1].srv.URL+"/v1/cluster/proxies?"+q, aliceToken, "", &out); st != 200 {
			t.Fatalf("proxies ?%s: %d %s", q, st, data)
		}
		return out
	}
	rows := func(p ProxyPage) string {
		var s []string
		for _, r := range p.Proxies {
			var k struct{ NodeID string }
			json.Unmarshal(r.Proxy, &k)
			s = append(s, r.Member+":"+k.NodeID)
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct {
		q             string
		total, nacked int
		rows          string
	}{
		{"", 5, 2, "m1:gw-a m2:gw-a2 m1:gw-b m2:gw-c m1:gw-d"},
		{"offset=1&limit=2", 5, 2, "m2:gw-a2 m1:gw-b"},
		{"offset=9", 5, 2, ""},
		{"q=gw-a", 2, 1, "m1:gw-a m2:gw-a2"},
		{"nacked=true", 2, 2, "m2:gw-a2 m1:gw-b"},
		{"nacked=true&q=b", 1, 1, "m1:gw-b"},
		{"q=nothing", 0, 0, ""},
	} {
		p := get(tc.q)
		if p.AnsweredBy != "m2" || p.Total != tc.total || p.Nacked != tc.nacked || rows(p) != tc.rows || p.Errors != nil {
			t.Errorf("?%s: total %d nacked %d rows %q errors %v; want %d %d %q", tc.q, p.Total, p.Nacked, rows(p), p.Errors, tc.total, tc.nacked, tc.rows)
		}
	}
	for _, q := range []string{"limit=501", "offset=-1"} {
		if st, _ := call(t, "GET", ms[0].srv.URL+"/v1/cluster/proxies?"+q, aliceToken, "", nil); st != 400 {
			t.Errorf("?%s: %d, want 400", q, st)
		}
	}
	// A member that cannot be reached is named, the others' proxies listed.
	ms[0].srv.Close()
	p := get("")
	if p.Total != 2 || len(p.Errors) != 1 || p.Errors[0].Member != "m1" || rows(p) != "m2:gw-a2 m2:gw-c" {
		t.Errorf("with m1 down: %+v", p)
	}
}

// ---------- fleet lists ----------

var nameWords = []string{"lamp", "cam", "sensor", "meter", "air", "bus-stop", "light", "pump", "x9", "a1b"}

// fleetDoc is a generated city whose device names vary: every eleventh is
// renamed from words, and the first and last names (sorted) are known.
func fleetDoc(devices int) *topology.Document {
	doc := topologytest.Generate(topologytest.Spec{Zones: 4, GatewaysPerZone: 5, Devices: devices})
	for i := range doc.Devices {
		if i%11 == 5 {
			doc.Devices[i].Name = fmt.Sprintf("%s-%s-%d", nameWords[i%len(nameWords)], nameWords[(i/11)%len(nameWords)], i)
		}
	}
	doc.Devices[1].Name = "a-first"
	doc.Devices[2].Name = "zz-the-very-last"
	return doc
}

func loadFleet(t *testing.T, m *consoleMember, doc *topology.Document) *topology.Index {
	t.Helper()
	ix, err := topology.NewIndex(doc)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := m.store.ReplaceDocument(testCtx(t), ix)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := m.store.WaitFor(testCtx(t), rev)
	if err != nil {
		t.Fatal(err)
	}
	return snap.Index()
}

func names(rows []DeviceRow) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.Name
	}
	return out
}

func refNames(devs []*topology.Device, keep func(*topology.Device) bool) []string {
	var out []string
	for _, d := range devs {
		if keep(d) {
			out = append(out, d.Name)
		}
	}
	return out
}

func page(all []string, offset, limit int) []string {
	if offset > len(all) {
		return []string{}
	}
	return append([]string{}, all[offset:min(len(all), offset+limit)]...)
}

func listDevices(t *testing.T, base string, q url.Values) DeviceList {
	t.Helper()
	var out DeviceList
	if st, data := call(t, "GET", base+"/v1/devices?"+q.Encode(), aliceToken, "", &out); st != 200 {
		t.Fatalf("devices ?%s: %d %s", q.Encode(), st, data)
	}
	if out.Devices == nil {
		t.Fatalf("devices ?%s: null list", q.Encode())
	}
	return out
}

func TestDeviceList(t *testing.T) {
	m := startConsoleMembers(t, 1, consoleOpts{})[0]
	base := m.srv.URL
	if st, _ := call(t, "GET", base+"/v1/devices", aliceToken, "", nil); st != 404 {
		t.Errorf("devices before any topology: %d, want 404", st)
	}
	const n = 3000
	ix := loadFleet(t, m, fleetDoc(n))
	all := ix.Devices()
	allNames := refNames(all, func(*topology.Device) bool { return true })
	if len(all) != n || !slices.IsSorted(allNames) || allNames[0] != "a-first" || allNames[n-1] != "zz-the-very-last" {
		t.Fatalf("fixture: %d devices, first %q last %q", len(all), allNames[0], allNames[n-1])
	}
	check := func(what string, q url.Values, want []string, offset, limit int) DeviceList {
		t.Helper()
		got := listDevices(t, base, q)
		wantPage := page(want, offset, limit)
		if got.Total != len(want) || got.Offset != offset || !slices.Equal(names(got.Devices), wantPage) {
			t.Errorf("%s (?%s): total %d offset %d %v;\nwant total %d offset %d %v", what, q.Encode(),
				got.Total, got.Offset, head(names(got.Devices)), len(want), offset, head(wantPage))
		}
		return got
	}

	// No filter: pages of the sorted list.
	got := check("default page", url.Values{}, allNames, 0, defaultPage)
	if r := got.Devices[0]; r.Class == "" || r.Gateway == "" || r.Zone == "" || got.Revision == 0 {
		t.Errorf("row %+v revision %d", r, got.Revision)
	}
	check("a middle page", url.Values{"offset": {"1234"}, "limit": {"77"}}, allNames, 1234, 77)
	check("the last page", url.Values{"offset": {"2990"}, "limit": {"500"}}, allNames, 2990, 500)
	check("past the end", url.Values{"offset": {"5000"}}, allNames, 5000, defaultPage)
	check("limit 0", url.Values{"limit": {"0"}}, allNames, 0, 0)

	// Search.
	contains := func(q string) []string {
		lq := strings.ToLower(strings.TrimSpace(q))
		return refNames(all, func(d *topology.Device) bool { return strings.Contains(d.Name, lq) })
	}
	for _, tc := range []struct {
		q             string
		offset, limit int
		min           int // matches expected at least
	}{
		{"d-00012", 0, 50, 10},
		{"D-00012", 3, 4, 10},          // case-insensitive
		{"  lamp  ", 0, 500, 10},       // trimmed
		{"-cam-", 5, 10, 10},           // in the middle
		{"999", 0, 50, 2},              // at the end of names
		{"9", 100, 500, 100},           // many, offset over matches
		{"very-last", 0, 50, 1},        // the last name in the buffer
		{"zz-the-very-last", 0, 50, 1}, // all of it
		{"t", 0, 50, 2},                // the last name's last letter
		{"a-first", 0, 50, 1},          // the first name
		{"a", 0, 50, 10},
		{"9d", 0, 50, 0}, // across the end of one name and the start of the next
		{"tz", 0, 50, 0},
		{"no-such-device", 0, 50, 0},
		{"d-0002999", 0, 50, 1},
	} {
		want := contains(tc.q)
		if len(want) < tc.min {
			t.Fatalf("fixture: %q matches %d, want at least %d", tc.q, len(want), tc.min)
		}
		check("q="+tc.q, url.Values{"q": {tc.q}, "offset": {fmt.Sprint(tc.offset)}, "limit": {fmt.Sprint(tc.limit)}}, want, tc.offset, tc.limit)
	}
	if got := listDevices(t, base, url.Values{"q": {"no-such-device"}}); got.Total != 0 || len(got.Devices) != 0 {
		t.Errorf("no match: %+v", got)
	}

	// Zone and gateway filters, alone and with q.
	zoneOf := func(d *topology.Device) string { g, _ := ix.Gateway(d.Gateway); return g.Zone }
	inZone := refNames(all, func(d *topology.Device) bool { return zoneOf(d) == "z-001" })
	check("zone", url.Values{"zone": {"z-001"}, "offset": {"10"}, "limit": {"20"}}, inZone, 10, 20)
	check("zone and q", url.Values{"zone": {"z-001"}, "q": {"lamp"}, "limit": {"500"}},
		refNames(all, func(d *topology.Device) bool { return zoneOf(d) == "z-001" && strings.Contains(d.Name, "lamp") }), 0, 500)
	onGW := refNames(all, func(d *topology.Device) bool { return d.Gateway == "gw-00003" })
	check("gateway", url.Values{"gateway": {"gw-00003"}, "limit": {"500"}}, onGW, 0, 500)
	check("gateway and q", url.Values{"gateway": {"gw-00003"}, "q": {"-"}, "offset": {"7"}}, onGW, 7, defaultPage)
	check("gateway outside the zone", url.Values{"gateway": {"gw-00003"}, "zone": {"z-002"}}, nil, 0, defaultPage)
	check("cloud zone", url.Values{"zone": {"cloud"}}, nil, 0, defaultPage)
	for _, q := range []url.Values{{"zone": {"z-999"}}, {"gateway": {"gw-99999"}}, {"zone": {"z-001"}, "gateway": {"nope"}}} {
		if st, data := call(t, "GET", base+"/v1/devices?"+q.Encode(), aliceToken, "", nil); st != 404 || errorOf(t, data).Code != CodeNotFound {
			t.Errorf("?%s: %d %s, want 404", q.Encode(), st, data)
		}
	}

	// Bad parameters.
	for _, q := range []url.Values{
		{"limit": {"501"}}, {"limit": {"-1"}}, {"limit": {"x"}}, {"offset": {"-1"}}, {"offset": {"1e3"}},
		{"q": {strings.Repeat("a", maxQueryLen+1)}}, {"q": {"a\nb"}}, {"q": {"a\rb"}}, {"state": {"bogus"}},
	} {
		if st, data := call(t, "GET", base+"/v1/devices?"+q.Encode(), aliceToken, "", nil); st != 400 || errorOf(t, data).Code != CodeBadRequest {
			t.Errorf("?%.60s: %d %s, want 400", q.Encode(), st, data)
		}
	}
	check("q of the longest length", url.Values{"q": {strings.Repeat("a", maxQueryLen)}}, nil, 0, defaultPage)
	check("limit 500", url.Values{"limit": {"500"}}, allNames, 0, 500)

	// State filters: quarantined devices (not gateways), through the API.
	ctx := testCtx(t)
	c := NewClient(base, aliceToken)
	quarantined := []string{allNames[2500], allNames[17], "zz-the-very-last"}
	for _, name := range quarantined {
		if _, err := c.Quarantine(ctx, topology.KindDevice, name, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Quarantine(ctx, topology.KindGateway, "gw-00003", "stolen"); err != nil {
		t.Fatal(err)
	}
	slices.Sort(quarantined)
	got = check("quarantined", url.Values{"state": {"quarantined"}}, quarantined, 0, defaultPage)
	for _, r := range got.Devices {
		if r.Quarantine == nil || r.Quarantine.By != "alice" || r.Quarantine.Reason != "test" {
			t.Errorf("quarantined row %+v", r)
		}
	}
	check("quarantined, paged", url.Values{"state": {"quarantined"}, "offset": {"1"}, "limit": {"1"}}, quarantined, 1, 1)
	check("quarantined with q", url.Values{"state": {"quarantined"}, "q": {"VERY"}}, []string{"zz-the-very-last"}, 0, defaultPage)
	check("quarantined in a zone", url.Values{"state": {"quarantined"}, "zone": {zoneOf(mustDevice(t, ix, allNames[17]))}},
		refNames(all, func(d *topology.Device) bool {
			return slices.Contains(quarantined, d.Name) && zoneOf(d) == zoneOf(mustDevice(t, ix, allNames[17]))
		}), 0, defaultPage)

	// At risk: by risk, highest first, then by name; a score of 0 is no risk.
	risks := map[string]int{allNames[40]: 30, allNames[900]: 80, allNames[30]: 80, allNames[2000]: 10, allNames[50]: 0}
	var ops []raft.StateOp
	for name, score := range risks {
		ops = append(ops, raft.StateOp{Subject: topology.DeviceSubject(name), Op: raft.OpSetRisk, Risk: &topology.Risk{Score: score}})
	}
	st, data := call(t, "POST", base+"/v1/state", aliceToken, mustJSON(t, StateRequest{Ops: ops}), nil)
	if st != 200 {
		t.Fatalf("set risk: %d %s", st, data)
	}
	wantRisk := []string{allNames[30], allNames[900], allNames[40], allNames[2000]}
	got = check("at-risk", url.Values{"state": {"at-risk"}}, wantRisk, 0, defaultPage)
	for _, r := range got.Devices {
		if r.Risk != risks[r.Name] {
			t.Errorf("%s: risk %d, want %d", r.Name, r.Risk, risks[r.Name])
		}
	}
	check("at-risk, second page", url.Values{"state": {"at-risk"}, "offset": {"2"}, "limit": {"1"}}, wantRisk, 2, 1)
	check("attestation-failed", url.Values{"state": {"attestation-failed"}}, nil, 0, defaultPage)
}

// TestDeviceSearchMatchesBruteForce compares the name buffer's search with
// strings.Contains over every device, for many random queries.
func TestDeviceSearchMatchesBruteForce(t *testing.T) {
	m := startConsoleMembers(t, 1, consoleOpts{})[0]
	ix := loadFleet(t, m, fleetDoc(2500))
	all := ix.Devices()
	n := m.api.fleet.namesOf(ix)
	if n2 := m.api.fleet.namesOf(ix); n2 != n {
		t.Fatal("the name buffer is rebuilt for the same index")
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-"
	queries := []string{"-", "--", "d", "d-", "0", "00", "-0", "t", "zz", "last", "first", "aa", "pump-x9", "a1b-a1b"}
	for range 600 {
		var q string
		switch rnd.IntN(3) {
		case 0: // random letters
			b := make([]byte, 1+rnd.IntN(4))
			for i := range b {
				b[i] = alphabet[rnd.IntN(len(alphabet))]
			}
			q = string(b)
		default: // a piece of a real name, sometimes crossing into the next
			i := rnd.IntN(len(all))
			name := all[i].Name
			if rnd.IntN(8) == 0 && i+1 < len(all) {
				name += all[i+1].Name
			}
			from := rnd.IntN(len(name))
			q = name[from : from+1+rnd.IntN(min(8, len(name)-from))]
		}
		queries = append(queries, q)
	}
	for _, q := range queries {
		var want []string
		for _, d := range all {
			if strings.Contains(strings.ToLower(d.Name), q) {
				want = append(want, d.Name)
			}
		}
		var got []string
		n.match(q, func(i int) bool { got = append(got, n.devices[i].Name); return true })
		if !slices.Equal(got, want) {
			t.Fatalf("match(%q): %d names %v, brute force %d %v", q, len(got), head(got), len(want), head(want))
		}
		// Stopping early stops.
		if len(want) > 1 {
			calls := 0
			n.match(q, func(int) bool { calls++; return calls < 2 })
			if calls != 2 {
				t.Fatalf("match(%q) went on after fn returned false: %d calls", q, calls)
			}
		}
	}
	// And through the API, with paging, for some of them (upper-cased).
	for i, q := range queries[:60] {
		want := 0
		for _, d := range all {
			if strings.Contains(d.Name, q) {
				want++
			}
		}
		offset := rnd.IntN(want + 2)
		got := listDevices(t, m.srv.URL, url.Values{"q": {strings.ToUpper(q)}, "offset": {fmt.Sprint(offset)}, "limit": {"7"}})
		if got.Total != want || len(got.Devices) != min(7, max(0, want-offset)) {
			t.Fatalf("query %d %q offset %d: total %d, %d rows; want %d", i, q, offset, got.Total, len(got.Devices), want)
		}
		for _, r := range got.Devices {
			if !strings.Contains(r.Name, q) {
				t.Fatalf("q %q returned %q", q, r.Name)
			}
		}
	}
	// A new document gets a new buffer.
	ix2 := loadFleet(t, m, fleetDoc(100))
	if n2 := m.api.fleet.namesOf(ix2); n2 == n || len(n2.devices) != 100 {
		t.Fatal("the name buffer outlived its document")
	}
	if got := listDevices(t, m.srv.URL, url.Values{"q": {"d-00024"}}); got.Total != 0 {
		t.Errorf("a name of the old document is found in the new one: %+v", got)
	}
}

func TestZoneAndGatewayLists(t *testing.T) {
	m := startConsoleMembers(t, 1, consoleOpts{})[0]
	base := m.srv.URL
	var zs struct {
		Revision topology.Revision
		Zones    []ZoneRow
	}
	if st, data := call(t, "GET", base+"/v1/zones", aliceToken, "", &zs); st != 200 || zs.Zones == nil || len(zs.Zones) != 0 {
		t.Fatalf("zones before any topology: %d %s", st, data)
	}
	if st, _ := call(t, "GET", base+"/v1/zones/z-001/gateways", aliceToken, "", nil); st != 404 {
		t.Errorf("gateways before any topology: %d", st)
	}
	ix := loadFleet(t, m, fleetDoc(1000))
	if st, data := call(t, "GET", base+"/v1/zones", aliceToken, "", &zs); st != 200 {
		t.Fatalf("zones: %d %s", st, data)
	}
	if len(zs.Zones) != 5 || zs.Zones[0].Name != "cloud" || zs.Zones[0].Services != 4 || zs.Zones[0].Gateways != 0 {
		t.Fatalf("zones %+v", zs.Zones)
	}
	total := 0
	for _, z := range zs.Zones[1:] {
		want := 0
		for _, g := range ix.GatewaysIn(z.Name) {
			want += len(ix.DevicesOf(g.Name))
		}
		if z.Gateways != 5 || z.Devices != want || z.Services != 0 {
			t.Errorf("zone %+v, want 5 gateways and %d devices", z, want)
		}
		total += z.Devices
	}
	if total != 1000 {
		t.Errorf("zones count %d devices, want 1000", total)
	}

	if _, err := NewClient(base, aliceToken).Quarantine(testCtx(t), topology.KindGateway, "gw-00007", "stolen"); err != nil {
		t.Fatal(err)
	}
	type gwList struct {
		Revision topology.Revision
		Total    int
		Offset   int
		Gateways []GatewayRow
	}
	gws := func(zone string, q url.Values) gwList {
		t.Helper()
		var out gwList
		if st, data := call(t, "GET", base+"/v1/zones/"+zone+"/gateways?"+q.Encode(), aliceToken, "", &out); st != 200 {
			t.Fatalf("gateways of %s ?%s: %d %s", zone, q.Encode(), st, data)
		}
		return out
	}
	g := gws("z-001", nil)
	var gn []string
	for _, r := range g.Gateways {
		gn = append(gn, r.Name)
		if r.Zone != "z-001" || r.Devices != len(ix.DevicesOf(r.Name)) {
			t.Errorf("row %+v", r)
		}
		if (r.Quarantine != nil) != (r.Name == "gw-00007") {
			t.Errorf("row %+v: quarantine", r)
		}
	}
	if g.Total != 5 || fmt.Sprint(gn) != "[gw-00005 gw-00006 gw-00007 gw-00008 gw-00009]" {
		t.Fatalf("gateways of z-001: %d %v", g.Total, gn)
	}
	if g := gws("z-001", url.Values{"offset": {"4"}, "limit": {"2"}}); g.Total != 5 || len(g.Gateways) != 1 || g.Gateways[0].Name != "gw-00009" {
		t.Errorf("last page %+v", g)
	}
	if g := gws("z-001", url.Values{"q": {"GW-00007"}}); g.Total != 1 || len(g.Gateways) != 1 || g.Gateways[0].Name != "gw-00007" {
		t.Errorf("q %+v", g)
	}
	if g := gws("cloud", nil); g.Total != 0 || g.Gateways == nil {
		t.Errorf("cloud %+v", g)
	}
	if st, _ := call(t, "GET", base+"/v1/zones/z-999/gateways", aliceToken, "", nil); st != 404 {
		t.Errorf("unknown zone: %d", st)
	}
	if st, _ := call(t, "GET", base+"/v1/zones/z-001/gateways?limit=501", aliceToken, "", nil); st != 400 {
		t.Errorf("limit 501: %d", st)
	}
	if st, _ := call(t, "GET", base+"/v1/zones", "", "", nil); st != 401 {
		t.Errorf("zones without a token: %d", st)
	}
}

func TestConsoleSummary(t *testing.T) {
	clock := newTestClock()
	m := startConsoleMembers(t, 1, consoleOpts{clock: clock})[0]
	base := m.srv.URL
	summary := func() FleetSummary {
		t.Helper()
		var s FleetSummary
		if st, data := call(t, "GET", base+"/v1/console/summary", aliceToken, "", &s); st != 200 {
			t.Fatalf("summary: %d %s", st, data)
		}
		return s
	}
	if s := summary(); s.Devices != 0 || s.Revision != m.store.Current().Revision() {
		t.Fatalf("summary before any topology: %+v", s)
	}
	clock.Advance(time.Minute)
	ix := loadFleet(t, m, fleetDoc(500))
	ctx := testCtx(t)
	c := NewClient(base, aliceToken)
	for _, name := range []string{"d-0000010", "d-0000020"} {
		if _, err := c.Quarantine(ctx, topology.KindDevice, name, "x"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Quarantine(ctx, topology.KindGateway, "gw-00001", "x"); err != nil {
		t.Fatal(err)
	}
	rev, err := c.UpdateState(ctx, []raft.StateOp{
		{Subject: topology.DeviceSubject("d-0000030"), Op: raft.OpSetRisk, Risk: &topology.Risk{Score: 40}},
		{Subject: topology.DeviceSubject("d-0000040"), Op: raft.OpSetRisk, Risk: &topology.Risk{Score: 0}},
		{Subject: topology.GatewaySubject("gw-00002"), Op: raft.OpSetRisk, Risk: &topology.Risk{Score: 90}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.store.WaitFor(ctx, rev); err != nil {
		t.Fatal(err)
	}
	s := summary()
	t0 := clock.Now()
	if s.Revision != rev || s.DocumentRevision == 0 || s.Zones != 5 || s.Gateways != 20 || s.Devices != 500 || s.Services != 4 ||
		s.Flows != ix.NumFlows() || s.Quarantined != 3 || s.AtRisk != 2 || !s.ComputedAt.Equal(t0) {
		t.Fatalf("summary %+v", s)
	}

	// The revision moves: within two seconds the counts are reused.
	if _, err := c.Quarantine(ctx, topology.KindDevice, "d-0000050", "x"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if s := summary(); s.Quarantined != 3 || !s.ComputedAt.Equal(t0) {
		t.Errorf("within the TTL: %+v, want the cached counts", s)
	}
	clock.Advance(summaryTTL)
	s = summary()
	t1 := clock.Now()
	if s.Quarantined != 4 || !s.ComputedAt.Equal(t1) || s.Revision != m.store.Current().Revision() {
		t.Errorf("after the TTL: %+v, want 4 quarantined computed at %v", s, t1)
	}
	// The same revision, within the TTL: reused.
	clock.Advance(time.Second)
	if s := summary(); !s.ComputedAt.Equal(t1) {
		t.Errorf("same revision: recomputed at %v", s.ComputedAt)
	}

	// Attestations expire with time, not with a revision: a count made
	// before an expiry is not served after it.
	now := clock.Now()
	rev, err = m.store.UpdateState(ctx, []raft.StateOp{{Subject: topology.DeviceSubject("d-0000061"), Op: raft.OpSetAttestation,
		Attestation: &topology.Attestation{Status: topology.AttestationPassed, Method: "tpm2-quote", FirmwareVersion: "1.0.0",
			VerifiedAt: now, ExpiresAt: now.Add(time.Hour)}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.store.WaitFor(ctx, rev); err != nil {
		t.Fatal(err)
	}
	clock.Advance(summaryTTL)
	if s := summary(); s.AttestationPassed != 1 || s.AttestationExpired != 0 {
		t.Fatalf("attested: %+v", s)
	}
	clock.Advance(2 * time.Hour) // no write since: the revision is the same
	if s := summary(); s.AttestationPassed != 0 || s.AttestationExpired != 1 {
		t.Errorf("two hours later: %d passed, %d expired (computed at %v, now %v); want the attestation expired",
			s.AttestationPassed, s.AttestationExpired, s.ComputedAt, clock.Now())
	}
	if st, _ := call(t, "GET", base+"/v1/console/summary", "", "", nil); st != 401 {
		t.Errorf("summary without a token: %d", st)
	}
}

func mustDevice(t *testing.T, ix *topology.Index, name string) *topology.Device {
	t.Helper()
	d, ok := ix.Device(name)
	if !ok {
		t.Fatalf("no device %q", name)
	}
	return d
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func head(s []string) []string {
	if len(s) > 8 {
		return append(s[:8:8], fmt.Sprintf("... (%d more)", len(s)-8))
	}
	return s
}
