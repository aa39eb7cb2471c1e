package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vigil-iot/vigil/node"
	"github.com/vigil-iot/vigil/spire"
	"github.com/vigil-iot/vigil/xds"
)

// memberFlags are the flags of commands that run a member.
type memberFlags struct {
	cfg      node.Config
	logLevel string
}

func (m *memberFlags) register(cmd *cobra.Command) {
	m.cfg = node.DefaultConfig()
	f := cmd.Flags()
	f.StringVar(&m.cfg.DataDir, "data-dir", m.cfg.DataDir, "directory for the raft log, snapshots and this member's secrets")
	f.StringVar(&m.cfg.RaftAddr, "raft-addr", m.cfg.RaftAddr, "raft listen address")
	f.StringVar(&m.cfg.RaftAdvertise, "raft-advertise", "", "raft address peers dial (default: --raft-addr)")
	f.StringVar(&m.cfg.APIAddr, "api-addr", m.cfg.APIAddr, "HTTP API listen address")
	f.StringVar(&m.cfg.APIAdvertise, "api-advertise", "", "API address peers and forwarded writes use (default: --api-addr)")
	f.StringVar(&m.cfg.ClusterKeyFile, "cluster-key-file", "", "cluster key that raft peers authenticate with (default <data-dir>/cluster.key, created by a founding member)")
	f.StringVar(&m.cfg.TokenFile, "token-file", "", "operators' API tokens, \"name:token\" per line (default <data-dir>/api-tokens, created if missing)")
	f.StringVar(&m.cfg.Authz.Addr, "authz-addr", m.cfg.Authz.Addr, "gRPC address of the ext_authz Check service (envoy.service.auth.v3.Authorization)")
	f.StringVar(&m.cfg.Authz.PolicyDir, "policy-dir", "", "directory of Rego modules and data replacing the default policy; reloaded on change")
	f.StringVar(&m.cfg.Authz.PolicyEngine, "policy-engine", "go", "what decides with the default policy: go (its Go form, checked against the Rego by tests) or rego (OPA evaluating policy/vigil.rego, with a decision cache); a --policy-dir policy always runs as Rego")
	f.StringVar(&m.cfg.Authz.PolicyQuery, "policy-query", "", "the decision to query (default data.vigil.authz.decision)")
	f.StringVar(&m.cfg.Authz.DecisionLog, "decision-log", "", "hash-chained decision log file (default <data-dir>/decisions.log)")
	f.BoolVar(&m.cfg.Authz.DecisionLogStrict, "decision-log-strict", false, "make Check wait for the decision log instead of dropping decisions when it falls behind")
	f.DurationVar(&m.cfg.CheckpointInterval, "checkpoint-interval", node.DefaultCheckpointInterval, "how often this member checkpoints its decision log's head (seq and hash, signed with <data-dir>/audit.key) into the replicated state; also at shutdown")
	f.DurationVar(&m.cfg.Authz.EvalTimeout, "policy-timeout", 100*time.Millisecond, "longest a policy evaluation may take before the request is denied")
	f.StringVar(&m.cfg.XDS.Addr, "xds-addr", m.cfg.XDS.Addr, "gRPC address where Envoy proxies and xDS clients get their configuration (ADS, SotW and delta)")
	f.StringSliceVar(&m.cfg.XDS.Options.AuthzEndpoints, "xds-authz-endpoint", nil, "ext_authz address(es) gateways' Envoy calls (default: this member's --authz-addr)")
	f.StringVar(&m.cfg.XDS.Options.SDSSocket, "xds-sds-socket", "", "the SPIRE agent's SDS socket on each gateway (default "+xds.DefaultSDSSocket+")")
	f.Uint32Var(&m.cfg.XDS.Options.ListenerPort, "xds-listener-port", 0, "the device-facing port of each gateway's Envoy (default "+fmt.Sprint(xds.DefaultListenerPort)+")")
	f.StringVar(&m.cfg.ProxyTLS.CertFile, "proxy-tls-cert", "", "PEM certificate (the member's SVID, spiffe://<td>/vigil/node/<id>, plus a DNS/IP SAN for gRPC clients) for mutual TLS on xDS and ext_authz; with --proxy-tls-key and --proxy-tls-ca, a proxy gets only its own node's configuration and asks only about its own devices or zone")
	f.StringVar(&m.cfg.ProxyTLS.KeyFile, "proxy-tls-key", "", "PEM private key of --proxy-tls-cert (mode 0600); rewritten files take effect on the next handshake")
	f.StringVar(&m.cfg.ProxyTLS.CAFile, "proxy-tls-ca", "", "PEM trust bundle that proxies' SVIDs chain to (e.g. spire-server bundle show)")
	f.StringVar(&m.cfg.ProxyTLS.WorkloadSocket, "proxy-tls-workload-socket", "", "instead of the --proxy-tls-* files: the local SPIRE agent's Workload API socket, which must issue this member spiffe://<td>/vigil/node/<node-id> (rotation and bundle updates follow the agent)")
	f.StringVar(&m.cfg.APITLSCert, "api-tls-cert", "", "PEM certificate to serve the API over https (required for members on different hosts)")
	f.StringVar(&m.cfg.APITLSKey, "api-tls-key", "", "PEM private key of --api-tls-cert")
	f.StringVar(&m.cfg.APICAFile, "api-ca-file", "", "PEM CA bundle that verifies other members' https APIs (default: the system's roots)")
	f.StringVar(&m.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&m.cfg.RaftLogLevel, "raft-log-level", "warn", "log level of the raft library itself")
	f.DurationVar(&m.cfg.HeartbeatTimeout, "raft-heartbeat-timeout", 500*time.Millisecond,
		"how long a follower waits for the leader before standing for election; lower fails over faster but risks needless elections on a loaded host")
	f.DurationVar(&m.cfg.ElectionTimeout, "raft-election-timeout", 500*time.Millisecond, "how long a candidate waits for votes")
	f.DurationVar(&m.cfg.MaxStaleness, "max-staleness", node.DefaultMaxStaleness, "how long a member cut off from its cluster's quorum keeps allowing every flow its last-known state allows; past it only essential flows are allowed (0: never restrict). Decisions made while cut off are marked stale_ms in the decision log")
	registerSPIREFlags(f, &m.cfg.SPIRE)
	registerSPIREEdgeFlags(f, &m.cfg.SPIRE.Options)
	registerMonitorFlags(f, &m.cfg.Monitor)
}

// registerMonitorFlags adds the monitor's flags (continuous monitoring,
// risk and the playbook).
func registerMonitorFlags(f *pflag.FlagSet, c *node.MonitorConfig) {
	var on bool
	f.BoolVar(&on, "monitor", true, "run the monitor: baselines, findings, risk and the quarantine playbook (--monitor=false turns it off on this member)")
	f.Lookup("monitor").Value = invertedBool{&c.Off}
	f.StringVar(&c.OwnerWebhook, "owner-webhook", "", "URL the playbook posts its notification to for devices whose owner label is a name, not an http(s) URL")
	f.DurationVar(&c.EvidenceWindow, "evidence-window", 24*time.Hour, "how far back an incident's evidence bundle reaches")
	f.StringVar(&c.SIEM.Syslog, "siem-syslog", "", "export findings and incidents as RFC 5424 syslog with CEF payloads, octet-counted, to tcp://HOST:PORT or tls://HOST:PORT (durable outbox in <data-dir>/siem-outbox)")
	f.StringVar(&c.SIEM.SyslogCA, "siem-syslog-ca", "", "PEM CA certificates that verify a tls:// syslog receiver (default: the system's roots)")
	f.StringVar(&c.SIEM.SyslogCert, "siem-syslog-cert", "", "PEM client certificate for a tls:// syslog receiver that asks for one")
	f.StringVar(&c.SIEM.SyslogKey, "siem-syslog-key", "", "PEM private key of --siem-syslog-cert")
	f.StringVar(&c.SIEM.Webhook, "siem-webhook", "", "POST findings and incidents as OCSF JSON (Detection Finding 2004, Incident Finding 2005) to this URL")
	f.StringVar(&c.SIEM.WebhookToken, "siem-webhook-token", "", "bearer token for --siem-webhook (prefer the env VIGIL_SIEM_WEBHOOK_TOKEN)")
	f.StringVar(&c.SIEM.Alertmanager, "alertmanager-url", "", "send alerts to this Alertmanager's API v2 (e.g. http://alertmanager:9093)")
}

// invertedBool is a flag value that stores the opposite of what it is set to.
type invertedBool struct{ off *bool }

func (b invertedBool) String() string {
	if b.off == nil {
		return "true"
	}
	return strconv.FormatBool(!*b.off)
}
func (b invertedBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*b.off = !v
	return nil
}
func (b invertedBool) Type() string     { return "bool" }
func (b invertedBool) IsBoolFlag() bool { return true }

// registerSPIREEdgeFlags adds the flags that declare cloud edges to the
// SPIRE integration (after registerSPIREFlags, which sets the defaults).
func registerSPIREEdgeFlags(f *pflag.FlagSet, o *spire.Options) {
	f.StringSliceVar(&o.Edges, "spire-edge", nil,
		"a cloud edge's Envoy as ZONE/ID, its node.cluster and node.id (repeatable): it gets an entry for its SVID spiffe://<td>/zone/<zone>/edge/<id>, and each service with backends in the zone an entry the edge can fetch; an edge whose zone is not in the topology, or whose ID names a gateway, device or service, is skipped with a warning")
	f.StringSliceVar(&o.EdgeSelectors, "spire-edge-selector", nil,
		"workload selector (type:value, repeatable) of the Envoy process on the edge hosts, e.g. unix:uid:101; required with --spire-edge")
	f.StringSliceVar(&o.EdgeParents, "spire-edge-parent", nil,
		"ZONE=SPIFFE-ID (repeatable): parent of that zone's edge entries, a node alias or agent ID of the edge hosts (a path such as /zone/cloud/edge-hosts is taken in the topology's trust domain); default spiffe://<td>/zone/<zone>/hosts, the alias service entries use")
	f.DurationVar(&o.EdgeTTL, "spire-edge-ttl", o.EdgeTTL, "X509-SVID lifetime of cloud edges' own SVIDs (those of the services they front: --spire-service-ttl)")
}

// setLogger gives the member a logger at --log-level.
func (m *memberFlags) setLogger() error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(m.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	m.cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	return nil
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// serveDebugPprof serves Go's profiler (net/http/pprof) on addr, which
// must be a loopback address: the profiles show the member's internals
// and cost CPU, so they are for measuring on the member's own host only
// (vigil-load xds -pprof). It is never on by default.
func serveDebugPprof(ctx context.Context, addr string, log *slog.Logger) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--debug-pprof-addr: %w", err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--debug-pprof-addr %s: only a loopback address is allowed", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--debug-pprof-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { <-ctx.Done(); srv.Close() }()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("debug pprof server", "err", err)
		}
	}()
	log.Warn("serving Go's profiler; for measurements only", "addr", ln.Addr().String())
	return nil
}

func newServeCmd() *cobra.Command {
	var m memberFlags
	var pprofAddr string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a Vigil member",
		Long: `Run one member of a Vigil cluster.

A member started with an empty data dir and no --join founds a new cluster of
one, creating its cluster key and an API token file in the data dir. Further
members are started with --join <API address of any member> and the founding
member's cluster key (--cluster-key-file) and token file (--token-file). A
member restarted on its data dir rejoins its cluster by itself.

A SPIRE server whose agents attest with Vigil's TPM verifier (the vigil_tpm
node attestor, docs/spire-tpm.md) calls the members with a token of
--spire-tpm-token-file, the same file on every member; such a token reaches
POST /v1/spire/tpm/challenge and /v1/spire/tpm/attest and nothing else.

Settings come from flags, then VIGIL_* environment variables, then --config,
a YAML file of flag names and values (e.g. "node-id: n1").`,
		Example: `  vigil serve --node-id n1 --data-dir /var/lib/vigil
  vigil serve --node-id n2 --data-dir /var/lib/vigil --raft-addr 10.0.0.2:7000 \
      --api-addr 10.0.0.2:7070 --join 10.0.0.1:7070 \
      --cluster-key-file /etc/vigil/cluster.key --token-file /etc/vigil/api-tokens`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := m.setLogger(); err != nil {
				return err
			}
			n, err := node.Start(m.cfg)
			if err != nil {
				return err
			}
			ctx, stop := signalContext()
			defer stop()
			if pprofAddr != "" {
				if err := serveDebugPprof(ctx, pprofAddr, m.cfg.Logger); err != nil {
					return err
				}
			}
			return n.Run(ctx)
		},
	}
	m.register(cmd)
	host, _ := os.Hostname()
	cmd.Flags().StringVar(&m.cfg.ID, "node-id", host, "this member's unique ID (pinned to its data dir)")
	cmd.Flags().StringVar(&m.cfg.Join, "join", "", "API address of any member of the cluster to join")
	cmd.Flags().String("config", "", "YAML file of settings (env VIGIL_CONFIG)")
	// Hidden: for measurements on the member's own host (BENCHMARKS.md).
	cmd.Flags().StringVar(&pprofAddr, "debug-pprof-addr", "", "serve Go's profiler (/debug/pprof/) on this loopback address")
	_ = cmd.Flags().MarkHidden("debug-pprof-addr")
	registerDebugClock(cmd.Flags(), &m.cfg) // hidden: fault tests (debugclock.go)
	return cmd
}
