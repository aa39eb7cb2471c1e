package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/vigil-iot/vigil/topology"
)

// DefaultDebounce is how long ordinary changes are coalesced.
const DefaultDebounce = 100 * time.Millisecond

// MaxRequestBytes bounds one xDS request on the wire. An Envoy's
// DiscoveryRequest names its node and the resources it wants, a few KiB
// for a gateway; gRPC's default of 4 MiB would let one stream make the
// member hold far more.
const MaxRequestBytes = 1 << 20

// Source gives the current topology snapshot (*raft.Store satisfies it).
type Source interface {
	Current() *topology.Snapshot
}

// Change says what a committed revision changed (raft.Event without the
// snapshot).
type Change struct {
	// Document: the topology document was replaced; every node is rebuilt.
	Document bool
	// Restored: the whole state was replaced (Raft snapshot restore or a
	// lagging subscriber): every node is rebuilt at once.
	Restored bool
	// Subjects whose runtime state changed: a device rebuilds its
	// gateway's node, a gateway its own node, a service every node.
	Subjects []topology.Subject
	// Urgent pushes at once instead of debouncing, ahead of other
	// rebuilds. Update also pushes at once when a listed subject's
	// quarantine began or ended since the node was last built (after a
	// restore: when any of the node's quarantines did), so callers need
	// not work that out.
	Urgent bool
}

// Clock is time as the server sees it; tests replace it.
type Clock interface {
	Now() time.Time
	// AfterFunc runs f after d; the returned stop cancels it.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Config configures a Server.
type Config struct {
	// Source is required: nodes are built from Source.Current() (or the
	// snapshot last given to Update, whichever is newer).
	Source Source
	// Options are passed to Translate and DenyAll.
	Options Options
	// NodeID is this Vigil node's ID, reported in ProxyStatus.
	NodeID string
	Logger *slog.Logger
	// Debounce coalesces ordinary changes: the nodes they affect are
	// rebuilt together once it has passed since the first of them. Zero
	// means DefaultDebounce.
	Debounce time.Duration
	// Workers is how many nodes are rebuilt in parallel; zero means
	// GOMAXPROCS.
	Workers int
	Clock   Clock
	// Authenticate serves a node only over a connection whose verified
	// client certificate carries the node's own SPIFFE ID (the gRPC server
	// must require and verify client certificates): other streams are
	// refused, and Options.RequirePeer is set. Without it a client is
	// trusted to name itself.
	Authenticate bool
	// OnPush, when set, is called for every response sent on a stream
	// (SotW or delta), with its type URL. OnAnswer, when set, is called
	// when a proxy first answers such a response: an ACK (nack false) or a
	// NACK, latency after the response was sent; a response superseded
	// before its answer is never reported. Both run on the stream's
	// goroutine, once per response and type, and must be cheap and safe
	// for concurrent use (they are how the member counts pushes and times
	// ACKs for its metrics).
	OnPush   func(typeURL string)
	OnAnswer func(typeURL string, latency time.Duration, nack bool)
}

// typeURLs are the resource types a node's snapshot holds, in Resources
// order.
var typeURLs = [...]resourcev3.Type{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType}

func lists(r *Resources) [len(typeURLs)][]types.Resource {
	return [...][]types.Resource{r.Listeners, r.Routes, r.Clusters, r.Endpoints}
}

// Server serves per-node snapshots over SotW and delta xDS (ADS and the
// per-type services).
type Server struct {
	cfg    Config
	log    *slog.Logger
	cache  cachev3.SnapshotCache
	xds    serverv3.Server
	status *tracker
	ctx    context.Context
	cancel context.CancelFunc
	// opts are Config.Options with the defaults filled in.
	opts Options
	// denyAll is what unknown nodes get; it depends only on the options.
	denyAll    *Resources
	denyAllEnc [len(typeURLs)][]*encoded
	// shapes are the gateways' resources with their names left open.
	shapes *shapes
	// pool rebuilds nodes in parallel, urgent ones first. Translation and
	// hashing run there without mu; only installing a result takes it.
	pool *pool

	mu     sync.Mutex // guards the fields below and every nodeState
	last   *topology.Snapshot
	nodes  map[string]*nodeState
	warned map[string]bool // unknown node IDs already logged
	// dirty nodes wait for the debounce, which stopDebounce cancels.
	dirty        map[string]*nodeState
	stopDebounce func() bool
	closed       bool
	// beforeInstall, when set (by tests), runs between preparing a build
	// and installing it, without mu.
	beforeInstall func(id string, rev topology.Revision)
}

// NewServer returns a server; Register it on a gRPC server and feed it
// changes with Update. Close stops it.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("xds server: no snapshot source")
	}
	if err := cfg.Options.Validate(); err != nil {
		return nil, fmt.Errorf("xds server: %w", err)
	}
	if cfg.Debounce < 0 || cfg.Workers < 0 {
		return nil, fmt.Errorf("xds server: negative debounce %v or workers %d", cfg.Debounce, cfg.Workers)
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = DefaultDebounce
	}
	cfg.Options.RequirePeer = cfg.Options.RequirePeer || cfg.Authenticate
	if cfg.Workers == 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	denyAll, err := DenyAll(cfg.Options)
	if err != nil {
		return nil, fmt.Errorf("xds server: %w", err)
	}
	denyAllEnc, err := encodeAll(denyAll)
	if err != nil {
		return nil, fmt.Errorf("xds server: deny-all: %w", err)
	}
	opts := cfg.Options.withDefaults()
	s := &Server{
		opts:       opts,
		denyAll:    denyAll,
		denyAllEnc: denyAllEnc,
		shapes:     newShapes(opts),
		cfg:        cfg,
		log:        cfg.Logger.With("component", "xds"),
		status:     newTracker(cfg.Clock.Now, cfg.NodeID),
		pool:       newPool(cfg.Workers),
		nodes:      map[string]*nodeState{},
		warned:     map[string]bool{},
		dirty:      map[string]*nodeState{},
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// Not ADS mode: in ADS mode the cache only answers a request naming
	// every resource of a type, and grpc-go names only what it needs.
	s.cache = cachev3.NewSnapshotCache(false, nodeHash{}, gcpLogger{s.log})
	// Ordered ADS: an ADS stream takes its responses from one channel with
	// a plain select, instead of go-control-plane's default loop, which
	// rebuilds a reflect.Select over a channel per type at every request
	// (a quarter of a stream's work in a push). Responses go out in the
	// order the cache makes them, as before; the cache answers each type's
	// watch at most once, so the channel (one slot per type) never fills.
	s.xds = serverv3.NewServer(s.ctx, s.cache, callbacks{s}, sotwv3.WithOrderedADS(), sotwv3.WithLogger(gcpLogger{s.log}))
	return s, nil
}

// Register adds ADS (SotW and delta) and the per-type LDS, RDS, CDS and
// EDS services to g.
func (s *Server) Register(g *grpc.Server) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, s.xds)
	routeservice.RegisterRouteDiscoveryServiceServer(g, s.xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, s.xds)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, s.xds)
}

// Run waits for ctx to end, then closes the server.
func (s *Server) Run(ctx context.Context) error {
	<-ctx.Done()
	s.Close()
	return nil
}

// Close ends every stream, cancels pending rebuilds and waits for those
// under way, whose results are dropped.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	if s.stopDebounce != nil {
		s.stopDebounce()
		s.stopDebounce = nil
	}
	clear(s.dirty)
	s.mu.Unlock()
	s.cancel()
	s.pool.close()
}

// Status returns every node's status, sorted by node ID.
func (s *Server) Status() []ProxyStatus { return s.status.list() }

// Dump returns what node receives now: its translation, or the deny-all
// configuration when it is unknown.
// With authentication, node is taken to be its own holder, unless it
// names another Peer.
func (s *Server) Dump(node Node) (*Resources, error) {
	snap := s.current()
	if kind, err := Classify(snap.Index(), node); err == nil && node.Peer == "" {
		node.Peer = ExpectedPeer(snap.Index(), node, kind)
	}
	res, _, err := s.translate(node.key(), snap)
	return res, err
}

// Update records a committed change and rebuilds the nodes it affects:
// urgent ones at once and ahead of any other rebuild, the others together
// once Debounce has passed.
func (s *Server) Update(snap *topology.Snapshot, c Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || snap == nil {
		return
	}
	if s.last == nil || !s.last.Newer(snap) {
		s.last = snap
	}
	all := c.Document || c.Restored
	affected := map[string]bool{}
	for _, sub := range c.Subjects {
		switch sub.Kind {
		case topology.KindGateway:
			affected[sub.Name] = true
		case topology.KindDevice:
			if d, ok := snap.Index().Device(sub.Name); ok {
				affected[d.Gateway] = true
			}
		default:
			all = true
		}
	}
	for id, n := range s.nodes {
		gateway, wide := "", false
		if !all {
			gateway, wide = scopeOf(id, snap)
		}
		switch {
		case !all && !wide && !affected[gateway]:
		case c.Urgent || n.quarantineFlipped(id, snap, c.Subjects) || c.Restored && n.quarantineChanged(id, snap):
			s.queueLocked(id, n, urgentQueue)
		case c.Restored:
			s.queueLocked(id, n, normalQueue)
		case n.queued == notQueued:
			// A queued rebuild has not started yet: it will read this
			// snapshot or a newer one.
			s.dirty[id] = n
		}
	}
	if len(s.dirty) > 0 && s.stopDebounce == nil {
		s.stopDebounce = s.cfg.Clock.AfterFunc(s.cfg.Debounce, s.flush)
	}
}

// flush queues the nodes that waited for the debounce.
func (s *Server) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.stopDebounce = nil
	for id, n := range s.dirty {
		s.queueLocked(id, n, normalQueue)
	}
}

// queueLocked queues a rebuild of node id in q unless it already waits in
// q or a more urgent queue. Callers hold s.mu.
func (s *Server) queueLocked(id string, n *nodeState, q queue) {
	delete(s.dirty, id) // the rebuild will read the newest snapshot
	if n.queued >= q {
		return
	}
	n.queued = q
	n.ticket++
	ticket := n.ticket
	s.pool.submit(q == urgentQueue, func() { s.rebuild(id, n, ticket) })
}

// rebuild is a pool job: it builds node id at the newest snapshot unless a
// later job superseded it.
func (s *Server) rebuild(id string, n *nodeState, ticket uint64) {
	s.mu.Lock()
	if s.closed || s.nodes[id] != n || n.ticket != ticket {
		s.mu.Unlock()
		return
	}
	n.queued = notQueued // from now on a change queues it again
	snap, hook, prev := s.currentLocked(), s.beforeInstall, n.parts
	s.mu.Unlock()
	s.buildUnlocked(id, n, snap, prev, hook)
}

// buildUnlocked prepares node id's build at snap (reusing prev, the parts
// of its previous build) without s.mu, then installs it.
func (s *Server) buildUnlocked(id string, n *nodeState, snap *topology.Snapshot, prev *gatewayParts, hook func(string, topology.Revision)) {
	b := s.prepare(id, snap, prev)
	if hook != nil {
		hook(nodeOfKey(id).ID, snap.Revision())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.installLocked(id, n, b)
}

// current is the newest snapshot known.
func (s *Server) current() *topology.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.currentLocked()
}

func (s *Server) currentLocked() *topology.Snapshot {
	cur := s.cfg.Source.Current()
	switch {
	case cur == nil && s.last == nil:
		return topology.EmptySnapshot()
	case cur == nil || s.last != nil && s.last.Newer(cur):
		return s.last
	}
	return cur
}

// ensure builds node id's snapshot if the server does not hold one yet. It
// runs in the request callback, before go-control-plane opens the watch,
// so the first request is answered from the cache at once. (A second
// stream of the node arriving meanwhile gets its answer when the build is
// installed.)
func (s *Server) ensure(id string) {
	s.mu.Lock()
	if s.closed || s.nodes[id] != nil {
		s.mu.Unlock()
		return
	}
	n := &nodeState{}
	s.nodes[id] = n
	snap, hook := s.currentLocked(), s.beforeInstall
	s.mu.Unlock()
	s.buildUnlocked(id, n, snap, nil, hook)
}

// forget drops node id once its last stream has closed, so that nodes that
// come and go (or made-up IDs) do not pile up.
func (s *Server) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[id]
	if n == nil || s.status.streamsOf(id) > 0 {
		return
	}
	delete(s.nodes, id) // its queued and running builds come to nothing
	delete(s.dirty, id)
	delete(s.warned, id)
	s.cache.ClearSnapshot(id)
}

func (g gcpLogger) debug(format string, args []any) {
	if g.l.Enabled(context.Background(), slog.LevelDebug) {
		g.l.Debug(fmt.Sprintf(format, args...))
	}
}

// gcpLogger adapts go-control-plane's logger to slog; its info messages are
// per-request chatter, so they go to debug.
type gcpLogger struct{ l *slog.Logger }

func (g gcpLogger) Debugf(format string, args ...any) { g.debug(format, args) }
func (g gcpLogger) Infof(format string, args ...any)  { g.debug(format, args) }
func (g gcpLogger) Warnf(format string, args ...any)  { g.l.Warn(fmt.Sprintf(format, args...)) }
func (g gcpLogger) Errorf(format string, args ...any) { g.l.Error(fmt.Sprintf(format, args...)) }
