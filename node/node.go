package node

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/console"
	"github.com/vigil-iot/vigil/raft"
)

// Config is one member's configuration.
type Config struct {
	ID      string
	DataDir string
	// RaftAddr is the raft listen address; RaftAdvertise what peers dial.
	RaftAddr, RaftAdvertise string
	// APIAddr is the HTTP API listen address; APIAdvertise what peers and
	// forwarded writes use.
	APIAddr, APIAdvertise string
	// Join is the API address of any member of an existing cluster. Empty
	// means: found a new cluster if this data dir holds none.
	Join string
	// ClusterKeyFile authenticates raft peers; TokenFile lists operators'
	// API tokens. Both default to files in DataDir, created when missing.
	ClusterKeyFile, TokenFile string
	// APITLSCert and APITLSKey serve the API over https; APICAFile verifies
	// other members' https APIs (default: the system's roots). Without TLS
	// members only send tokens to one another over loopback.
	APITLSCert, APITLSKey, APICAFile string
	RaftLogLevel                     string
	// Authz configures the ext_authz server.
	Authz AuthzConfig
	// XDS configures the xDS server.
	XDS XDSConfig
	// ProxyTLS, when set, makes xDS and ext_authz mutual TLS: a proxy is
	// served only its own node's configuration, and asks only about its
	// own devices or zone. Without it they trust any client (loopback and
	// private networks only).
	ProxyTLS ProxyTLS
	// SPIRE configures the SPIRE integration (off without a socket).
	SPIRE SPIREConfig
	// Monitor configures continuous monitoring, risk and the playbook.
	Monitor MonitorConfig
	// CheckpointInterval is how often the member checkpoints its decision
	// log's head into the replicated state (default 5s; also at shutdown).
	CheckpointInterval time.Duration
	// HeartbeatTimeout and ElectionTimeout tune failure detection; zero
	// keeps the raft package's defaults.
	HeartbeatTimeout, ElectionTimeout time.Duration
	// MaxStaleness is how long a member cut off from its cluster's quorum
	// keeps allowing every flow its replica allows; past it only essential
	// flows are allowed. Zero never restricts.
	MaxStaleness time.Duration
	// Clock is this member's wall clock for what it decides and records
	// with (clock.go); default time.Now. Raft's timers never read it.
	Clock  func() time.Time
	Logger *slog.Logger
}

// DefaultConfig holds the documented defaults.
func DefaultConfig() Config {
	return Config{DataDir: "vigil-data", RaftAddr: "127.0.0.1:7000", APIAddr: api.DefaultAddr,
		Authz: AuthzConfig{Addr: ":9191"}, XDS: XDSConfig{Addr: ":18000"}}
}

// Validate checks the configuration and fills in derived defaults.
func (c *Config) Validate() error {
	var errs []error
	if c.ID == "" {
		errs = append(errs, errors.New("node id is required (--node-id)"))
	} else if !raft.ValidMemberID(c.ID) {
		errs = append(errs, fmt.Errorf("node id %q must be 1-63 characters of a-z, 0-9, '-' and '_'", c.ID))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data dir is required (--data-dir)"))
	}
	for name, a := range map[string]string{"raft address": c.RaftAddr, "API address": c.APIAddr, "authz address": c.Authz.Addr, "xDS address": c.XDS.Addr} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %v", name, a, err))
		}
	}
	c.ClusterKeyFile = cmp.Or(c.ClusterKeyFile, filepath.Join(c.DataDir, "cluster.key"))
	c.TokenFile = cmp.Or(c.TokenFile, filepath.Join(c.DataDir, "api-tokens"))
	if c.CheckpointInterval < 0 {
		errs = append(errs, fmt.Errorf("checkpoint interval %v is negative", c.CheckpointInterval))
	}
	c.CheckpointInterval = cmp.Or(c.CheckpointInterval, DefaultCheckpointInterval)
	if c.SPIRE.Socket != "" {
		if err := c.SPIRE.Options.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("spire: %w", err))
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return errors.Join(errs...)
}

// Node is one running member.
type Node struct {
	cfg     Config
	store   *raft.Store
	apiLn   net.Listener
	apiAddr string // advertised
	http    *http.Server
	peer    string // peer API token
	conn    *api.Connector
	authz   *authzPart
	audit   *checkpointer
	xds     *xdsPart
	spire   *spirePart
	attest  *attestor
	monitor *monitorPart // nil with Monitor.Off
	// decisions counts the authorizer's decisions for GET /metrics.
	decisions *decisionMetrics
	ready     atomic.Bool
	// proxyTLS is nil when xDS and ext_authz do not authenticate.
	proxyTLS proxyCreds
	// hub fans decisions out to the console's live streams.
	hub *console.Hub
	api *api.Server
	// quorum tells whether this member is cut off from the cluster.
	quorum *quorum
	// disk watches the data dir's free space (disk.go).
	disk *diskWatch
}

// proxyServer is a gRPC server for proxies: mutual TLS with ProxyTLS when
// it is set, and requests of at most maxRequest bytes (gRPC's default, 4
// MiB, is far more than a proxy sends and lets one request take memory).
func (n *Node) proxyServer(maxRequest int, extra ...grpc.ServerOption) *grpc.Server {
	opts := append([]grpc.ServerOption{grpc.MaxRecvMsgSize(maxRequest)}, extra...)
	if n.proxyTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(n.proxyTLS.serverConfig())))
	}
	return grpc.NewServer(opts...)
}

// Start provisions secrets, opens the store and binds the API listener. It
// returns once the member is listening; Run serves.
func Start(cfg Config) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	// The raft log, snapshots and secrets live here; nobody else may read them.
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if err := checkNodeID(cfg.DataDir, cfg.ID); err != nil {
		return nil, err
	}
	auditKey, err := loadAuditKey(filepath.Join(cfg.DataDir, "audit.key"))
	if err != nil {
		return nil, err
	}
	existing := hasRaftState(cfg.DataDir)
	key, err := loadClusterKey(cfg.ClusterKeyFile, cfg.Join == "" && !existing)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(cfg.TokenFile); errors.Is(err, fs.ErrNotExist) {
		if cfg.Join != "" || existing {
			// Only a founding member makes tokens: a member with tokens of
			// its own would refuse the cluster's operators.
			return nil, fmt.Errorf("token file %s does not exist: give this member the cluster's token file (--token-file)", cfg.TokenFile)
		}
		if err := GenerateTokenFile(cfg.TokenFile, "admin"); err != nil {
			return nil, fmt.Errorf("create token file: %w", err)
		}
		log.Info("created an API token file; clients use it with --token-file or VIGIL_TOKEN_FILE", "path", cfg.TokenFile)
	}
	if _, err := readSecret(cfg.TokenFile); err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	tokens, err := api.LoadTokens(cfg.TokenFile, key)
	if err != nil {
		return nil, err
	}
	spireTPMTokens, err := loadSPIRETPMTokens(cfg.SPIRE.TPMTokenFile)
	if err != nil {
		return nil, err
	}
	if name := spireTPMTokens.Shared(tokens); name != "" {
		return nil, fmt.Errorf("--spire-tpm-token-file: token %q is also an operator's token (--token-file): the SPIRE server's token must open only the vigil_tpm routes; give it a token of its own", name)
	}
	ln, err := net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		return nil, fmt.Errorf("API listen on %s: %w", cfg.APIAddr, err)
	}
	advertise := cmp.Or(cfg.APIAdvertise, ln.Addr().String())
	if host, _, _ := net.SplitHostPort(api.HostPort(advertise)); host == "" ||
		net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("API address %s cannot be dialled by peers; set --api-advertise", advertise)
	}
	serverTLS, conn, err := apiTLS(&cfg)
	if err != nil {
		ln.Close()
		return nil, err
	}
	if serverTLS != nil && !strings.HasPrefix(advertise, "https://") {
		advertise = "https://" + api.HostPort(advertise)
	}
	var proxyTLS proxyCreds
	if cfg.ProxyTLS.enabled() {
		if proxyTLS, err = newProxyCreds(cfg.ProxyTLS, cfg.ID, log); err != nil {
			ln.Close()
			return nil, err
		}
		defer func() {
			if err != nil {
				proxyTLS.Close()
			}
		}()
	} else {
		log.Warn("xDS and ext_authz do not authenticate proxies: any client may name any node and ask any question " +
			"(set --proxy-tls-cert, --proxy-tls-key and --proxy-tls-ca outside a lab)")
	}
	store, err := raft.Open(raft.Config{
		ID: cfg.ID, DataDir: cfg.DataDir, BindAddr: cfg.RaftAddr, AdvertiseAddr: cfg.RaftAdvertise,
		ClusterKey: key, Bootstrap: cfg.Join == "", Logger: log, RaftLogLevel: cfg.RaftLogLevel,
		HeartbeatTimeout: cfg.HeartbeatTimeout, ElectionTimeout: cfg.ElectionTimeout,
		LeaderLeaseTimeout: cfg.HeartbeatTimeout / 2,
	})
	if err != nil {
		ln.Close()
		return nil, err
	}
	n := &Node{cfg: cfg, store: store, apiLn: ln, apiAddr: advertise, peer: api.PeerToken(key), conn: conn, proxyTLS: proxyTLS,
		decisions: newDecisionMetrics(), hub: &console.Hub{},
		quorum: newQuorum(store, cfg.ElectionTimeout, cfg.MaxStaleness)}
	n.disk = newDiskWatch(cfg.DataDir, cfg.ID, store, log)
	n.quorum.diskFullFor = n.disk.fullFor
	if n.authz, err = n.startAuthz(context.Background()); err != nil {
		ln.Close()
		store.Close()
		return nil, err
	}
	n.audit = &checkpointer{n: n, log: n.authz.log, key: auditKey,
		pub: raft.EncodeAuditKey(auditKey.Public().(ed25519.PublicKey)), interval: cfg.CheckpointInterval}
	if n.xds, err = n.startXDS(); err != nil {
		n.authz.ln.Close()
		ln.Close()
		store.Close()
		return nil, err
	}
	if n.spire, err = n.startSPIRE(); err != nil {
		n.authz.ln.Close()
		n.xds.ln.Close()
		ln.Close()
		store.Close()
		return nil, err
	}
	n.attest = newAttestor(n)
	var mon api.Monitor
	if !cfg.Monitor.Off {
		if n.monitor, err = n.startMonitor(); err != nil {
			n.authz.ln.Close()
			n.xds.ln.Close()
			ln.Close()
			store.Close()
			return nil, err
		}
		n.attest.monitor = n.monitor
		n.xds.server.RegisterALS(n.xds.grpc, n.monitor.accessEntry)
		mon = n.monitor
	} else {
		n.xds.server.RegisterALS(n.xds.grpc, nil)
	}
	n.api = api.NewServer(api.ServerConfig{Store: diskGate{store, n.disk}, Tokens: tokens, SPIRETPMTokens: spireTPMTokens, PeerToken: n.peer, Connector: conn,
		Ready: n.Ready, Node: n.status, XDS: n.xds, Attestor: n.attest, Monitor: mon, Metrics: n.metricsHandler(),
		DryRun: n.dryRunner(), Console: n.consoleParts(), Logger: log, Partitioned: n.quorum.partitioned, Now: cfg.Clock,
		Local: n.store.QuarantineLocal})
	n.api.HandleSPIRE(n.spire.api())
	n.http = &http.Server{
		Handler:           n.api,
		TLSConfig:         serverTLS,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	return n, nil
}

// checkNodeID pins the member ID to its data dir, so that a data dir is
// never reused under another identity.
func checkNodeID(dir, id string) error {
	path := filepath.Join(dir, "node-id")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return os.WriteFile(path, []byte(id+"\n"), 0o600)
	}
	if err != nil {
		return err
	}
	if have := strings.TrimSpace(string(data)); have != id {
		return fmt.Errorf("data dir %s belongs to member %q, not %q", dir, have, id)
	}
	return nil
}

func hasRaftState(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "raft.db"))
	return err == nil
}

// Store is the member's replicated store.
func (n *Node) Store() *raft.Store { return n.store }

// APIAddr is the advertised API address.
func (n *Node) APIAddr() string { return n.apiAddr }

// TokenFile is the path of the operators' token file.
func (n *Node) TokenFile() string { return n.cfg.TokenFile }

// Run serves until ctx ends or a part fails, then stops everything.
func (n *Node) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	parts := append([]func(context.Context) error{
		func(ctx context.Context) error {
			go func() {
				<-ctx.Done()
				shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
				defer done()
				n.api.Shutdown() // ends live decision streams
				n.http.Shutdown(shutdown)
			}()
			serve := func() error { return n.http.Serve(n.apiLn) }
			if n.http.TLSConfig != nil {
				serve = func() error { return n.http.ServeTLS(n.apiLn, "", "") }
			}
			if err := serve(); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("API server: %w", err)
			}
			return nil
		},
		func(ctx context.Context) error {
			if err := n.register(ctx); err != nil && ctx.Err() == nil {
				return err
			}
			return nil
		},
		n.becomeReady,
		n.proposeLocal,
		n.endStreamsWhenCutOff,
		n.attest.run,
		n.audit.run,
		n.disk.run,
	}, append(append(n.authz.parts(), n.xds.parts()...), n.spire.parts()...)...)
	if n.monitor != nil {
		parts = append(parts, n.monitor.parts()...)
	}
	errc := make(chan error, len(parts))
	for _, run := range parts {
		go func() { errc <- run(ctx) }()
	}
	n.cfg.Logger.Info("vigil member serving", "id", n.cfg.ID, "api", n.apiAddr, "raft", n.store.Addr(),
		"authz", n.authz.Addr(), "xds", n.xds.Addr(), "policy", n.authz.engine.Current().Source, "data_dir", n.cfg.DataDir)
	// A part may finish early and cleanly (registration does); the first
	// one to fail stops them all. Every part returns once ctx ends.
	var err error
	for range parts {
		if e := <-errc; e != nil {
			if err == nil {
				err = e
			}
			cancel()
		}
	}
	// Every part has returned, the decision log's writer too: its head is
	// final. Anchor it while the store is still open.
	n.audit.final()
	if cerr := n.store.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close store: %w", cerr)
	}
	if n.proxyTLS != nil {
		n.proxyTLS.Close()
	}
	return err
}

// Ready reports whether this member has caught up with what the cluster
// had committed when it started; until then it must not decide anything.
func (n *Node) Ready() bool { return n.ready.Load() }

// becomeReady waits until this member has applied every entry the cluster
// had committed: a leader through a barrier, a follower by reaching the
// index the leader reports having applied. A member that restarted serves
// its last snapshot until then, which may predate a quarantine.
func (n *Node) becomeReady(ctx context.Context) error {
	for ctx.Err() == nil {
		if n.catchUp(ctx) == nil {
			n.ready.Store(true)
			n.cfg.Logger.Info("member is ready: caught up with the cluster", "revision", n.store.Current().Revision())
			return nil
		}
		if r := n.store.Resumed(); r.Index > 0 && n.quorum.partitioned() != nil && !n.reachesAMember(ctx) {
			// Restarted while cut off: it holds again what it had
			// applied before it stopped, no older, and decides from
			// that, marked stale, rather than denying everything until
			// the partition heals. A member that can reach another is
			// not cut off, only not yet caught up (a leader backs off
			// from a follower that was down): it waits, so that what
			// was committed while it was down is in force before it
			// decides.
			n.ready.Store(true)
			n.cfg.Logger.Warn("member is ready while cut off from its cluster: deciding from the state it had applied before it stopped, marked stale",
				"index", r.Index, "revision", n.store.Current().Revision(), "last_contact", r.LastContact)
			return nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// reachesAMember reports whether any other registered member's API
// answers this member.
func (n *Node) reachesAMember(ctx context.Context) bool {
	for id, m := range n.store.Members() {
		if id == n.cfg.ID || m.APIAddr == "" {
			continue
		}
		c, cancel := context.WithTimeout(ctx, time.Second)
		_, err := n.conn.Client(m.APIAddr, n.peer).Self(c)
		cancel()
		if err == nil {
			return true
		}
	}
	return false
}

func (n *Node) catchUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if n.store.IsLeader() {
		return n.store.Barrier(ctx)
	}
	id, _ := n.store.Leader()
	m, ok := n.store.Member(id)
	if id == "" || !ok || m.APIAddr == "" {
		return errors.New("no leader known yet")
	}
	st, err := n.conn.Client(m.APIAddr, n.peer).Self(ctx)
	if err != nil {
		return err
	}
	for n.store.AppliedIndex() < st.AppliedIndex {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// XDSAddr is where proxies connect for xDS.
func (n *Node) XDSAddr() string { return n.xds.Addr() }

// AuthzAddr is where the ext_authz Check service listens.
func (n *Node) AuthzAddr() string { return n.authz.Addr() }

// register makes sure the cluster knows this member and its addresses: a
// new member joins through cfg.Join; a restarted one re-registers if its
// addresses changed; a founding member registers itself once it leads.
func (n *Node) register(ctx context.Context) error {
	want := raft.Member{ID: n.cfg.ID, RaftAddr: n.store.Addr(), APIAddr: n.apiAddr, AuditKey: n.audit.pub}
	log := n.cfg.Logger
	wait := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		if have, ok := n.store.Member(n.cfg.ID); ok && have == want {
			if attempt > 0 {
				log.Info("member registered", "id", want.ID, "api", want.APIAddr, "raft", want.RaftAddr)
			}
			return nil
		}
		err := n.registerOnce(ctx, want)
		if err != nil && attempt%10 == 9 {
			log.Warn("still trying to register with the cluster", "attempt", attempt+1, "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, 2*time.Second)
	}
}

func (n *Node) registerOnce(ctx context.Context, want raft.Member) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if n.store.IsLeader() {
		return n.store.RegisterMember(ctx, want)
	}
	target := n.cfg.Join
	if id, _ := n.store.Leader(); id != "" {
		if m, ok := n.store.Member(id); ok && m.APIAddr != "" {
			target = m.APIAddr
		}
	}
	if target == "" {
		return errors.New("no leader known yet")
	}
	return n.conn.Client(target, n.peer).Join(ctx, want)
}

// apiTLS loads the API's certificate and the CA that verifies other members.
func apiTLS(cfg *Config) (*tls.Config, *api.Connector, error) {
	var roots *x509.CertPool
	if cfg.APICAFile != "" {
		pem, err := os.ReadFile(cfg.APICAFile)
		if err != nil {
			return nil, nil, fmt.Errorf("API CA file: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("API CA file %s holds no PEM certificate", cfg.APICAFile)
		}
	}
	conn := api.NewConnector(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots})
	if cfg.APITLSCert == "" && cfg.APITLSKey == "" {
		return nil, conn, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.APITLSCert, cfg.APITLSKey)
	if err != nil {
		return nil, nil, fmt.Errorf("API TLS certificate: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}, conn, nil
}
