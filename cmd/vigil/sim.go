package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/internal/fleetsim"
)

func newSimCmd() *cobra.Command {
	var (
		cf      clientFlags
		cfg     fleetsim.Config
		targets []string
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Simulate a fleet: gateways' traffic through ext_authz and access logs, and attacks",
		Long: `Act as the gateways of the cluster's topology: every device with a flow to a
service sends what its flows allow (a request every ~10s per device, --rate
times that, always below the flows' and classes' rate limits with a margin;
small bodies, 56-64 KiB for camera classes) through the members' real
ext_authz (--authz, Checks spread over them in turn) and logs each request on
its gateway's access log stream (--xds: one gRPC ALS stream per gateway,
node.id the gateway, node.cluster its zone, log_name "vigil"). Each Check is
the one the gateway's Envoy sends: the device's SPIFFE ID as
attributes.source.principal (no x-forwarded-client-cert: a gateway keeps it
out of its Check), the route's vigil.service, the request's size. Each access
log entry carries the device's SPIFFE ID as the peer certificate's URI SAN and
the decision ID.

By default the simulator also answers what the gateway's Envoy answers by
itself, without a Check: requests no route of the gateway covers (its 403
catch-all), quarantined devices (RBAC, 403) and requests over a route's local
rate limit (429); only the access log shows those. --check-all sends every
request to ext_authz instead.

With --attest (the default) devices whose class requires attestation enroll a
simulated TPM and attest through the API first (unless they hold a passing
attestation for the next hour).

Scenarios (--scenario, repeatable or comma-separated, "all" for every one),
played in turn after --warmup of benign traffic, each on its own target:
  exfiltration  a sensor-like device POSTs 5 MiB bodies to exfil.attacker.example
                and to another class's route at its gateway (3 each)
  scan          a device sends 40+ requests: other devices' addresses, unknown
                services, other classes' routes under other devices' names
  zone-probe    a camera-like device requests the services of other zones
                (36 requests)
  replay        the device attests, then submits the same evidence again
  tamper        its gateway signals tamper (POST /v1/devices/NAME/signals)
  flood         the device sends 50 requests/s on its own flow for 15s
Targets are picked from the simulated devices by class name (override with
--target DEVICE for one scenario, or --target SCENARIO=DEVICE), never one that
is quarantined, has an unresolved incident or is on its class's
neverQuarantine list. After the first attack request the simulator polls every
member's API (members from the cluster status) every 50ms until the target is
quarantined on each, or an incident awaits approval (classes in approve mode),
or --timeout passes. The default warm-up (0) is at least 60s when a scenario
relies on the monitor's statistical baselines (exfiltration, flood): 1.5 times
what the target's class needs for 50 samples per member; 15s otherwise.

The run ends at --duration when it plays no scenario, else when every scenario
has reported; Ctrl-C ends it early. Attack targets stay quarantined.

The simulator speaks plain gRPC without a client certificate: use it with
members started without --proxy-tls (a member with proxy TLS refuses it, and
the simulator says so).

Exit status: 0 when every scenario played ended as its class expects (quarantined,
or awaiting-approval in approve mode) and nothing else was quarantined; 2
when not; 1 on errors.

--json prints the report (version 1; fields are only added):
  {"version": 1, "started": T, "ended": T, "mode": "gateway"|"check-all",
   "members": [{"id", "api"}], "authz": [ADDR], "xds": [ADDR],
   "devices": N, "idle": N, "gateways": N, "warmupSeconds": S,
   "attestation": {"attested", "valid", "failed": ["dev: why"], "unsupported"},
   "classes": [{"class", "devices", COUNTS, "denyReasons": {REASON: N}}],
   "totals": COUNTS,
   "scenarios": [{"scenario", "target", "class", "gateway",
     "mode": "auto"|"approve", "expected", "status", "ok": bool,
     "attackStart": T, "requests", "checked", "denied", "gatewayDenied",
     "quarantineMs", "decidedMs", "members": {ID: ms}, "incident",
     "incidentStatus", "risk", "findings": [{"detector", "severity", "score",
     "summary", "at", "learning"}], "detail", "error"}],
   "quarantines": [{"device", "since", "by", "reason", "scenario"}],
   "unexpectedQuarantines": N, "incidents": [{"id", "subject", "status",
   "risk", "title", "scenario"}], "errors": ["…"]}
  COUNTS: "sent", "checked", "allowed", "denied", "gatewayDenied",
  "rateLimited", "errors" (and in totals "accessLogs", "accessLogsLost").
  status: quarantined | awaiting-approval | partially-quarantined |
  not-quarantined | skipped | error. quarantineMs: from the first attack
  request until the last member was seen holding the quarantine (or the
  incident awaiting approval); decidedMs: until the quarantine's "since" (the
  monitor's decision). Both 0 when it did not happen. Benign counts exclude
  the attacks, which their scenario counts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.Server, cfg.Token, cfg.Connector, err = cf.connection(); err != nil {
				return err
			}
			if cfg.Targets, err = parseTargets(targets); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			cfg.Out = out
			if asJSON {
				cfg.Out = cmd.ErrOrStderr()
			}
			ctx, stop := signalContext()
			defer stop()
			sim, err := fleetsim.New(ctx, cfg)
			if err != nil {
				return err
			}
			rep, runErr := sim.Run(ctx)
			if rep != nil {
				if asJSON {
					enc := json.NewEncoder(out)
					enc.SetIndent("", "  ")
					if err := enc.Encode(rep); err != nil {
						return err
					}
				} else {
					rep.WriteText(out)
				}
			}
			if runErr != nil {
				return runErr
			}
			if !rep.OK() {
				return errExit{2}
			}
			return nil
		},
	}
	cf.register(cmd, false)
	f := cmd.Flags()
	f.StringSliceVar(&cfg.AuthzAddrs, "authz", []string{"127.0.0.1:9191"}, "members' ext_authz addresses (plain gRPC), comma-separated or repeated")
	f.StringSliceVar(&cfg.XDSAddrs, "xds", []string{"127.0.0.1:18000"}, "members' xDS addresses, where the gateways' access log streams go")
	f.IntVar(&cfg.Devices, "devices", 0, "simulate this many devices, spread over the classes (0: every device with a flow)")
	f.Float64Var(&cfg.Rate, "rate", 1, "multiply the benign rate (a request every ~10s per device); rate limits still win")
	f.DurationVar(&cfg.Duration, "duration", 2*time.Minute, "how long a run without scenarios lasts (0: until Ctrl-C)")
	f.DurationVar(&cfg.Warmup, "warmup", 0, "benign traffic before the first attack (0: picked, see above; negative: none)")
	f.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "how long each scenario waits for the quarantine, from its first attack request")
	f.StringSliceVar(&cfg.Scenarios, "scenario", nil, "attack scenarios to play: "+strings.Join(fleetsim.Scenarios, ", ")+", or all")
	f.StringSliceVar(&targets, "target", nil, "the device to attack: DEVICE (one scenario) or SCENARIO=DEVICE, repeatable")
	f.BoolVar(&cfg.Attest, "attest", true, "enroll simulated TPMs and attest the devices whose class requires it")
	f.BoolVar(&cfg.CheckAll, "check-all", false, "send every request to ext_authz (no gateway-local answers)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON on stdout (progress goes to stderr)")
	f.Uint64Var(&cfg.Seed, "seed", 1, "seed for target picks, timing jitter and sizes")
	return cmd
}

// parseTargets reads --target values: DEVICE or SCENARIO=DEVICE.
func parseTargets(in []string) (map[string]string, error) {
	out := map[string]string{}
	for _, t := range in {
		sc, dev, ok := strings.Cut(t, "=")
		if !ok {
			sc, dev = "", t
		}
		if dev == "" {
			return nil, fmt.Errorf("--target %q names no device", t)
		}
		if _, dup := out[sc]; dup {
			return nil, fmt.Errorf("--target given twice for %q", orAny(sc))
		}
		out[sc] = dev
	}
	return out, nil
}

func orAny(scenario string) string {
	if scenario == "" {
		return "any scenario"
	}
	return scenario
}

// connection is what client() builds a client from: the server, the
// token and a connector that verifies https members with --ca-file.
func (c *clientFlags) connection() (string, string, *api.Connector, error) {
	token := os.Getenv("VIGIL_TOKEN")
	if c.tokenFile != "" {
		data, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return "", "", nil, fmt.Errorf("token file: %w", err)
		}
		if token, err = api.FirstToken(data); err != nil {
			return "", "", nil, fmt.Errorf("token file %s: %w", c.tokenFile, err)
		}
	}
	if token == "" {
		return "", "", nil, errors.New("no API token: pass --token-file (VIGIL_TOKEN_FILE) or set VIGIL_TOKEN; " +
			"a member writes one to <data-dir>/api-tokens on first start")
	}
	if c.caFile == "" {
		return c.server, token, nil, nil
	}
	pem, err := os.ReadFile(c.caFile)
	if err != nil {
		return "", "", nil, fmt.Errorf("CA file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return "", "", nil, fmt.Errorf("CA file %s holds no PEM certificate", c.caFile)
	}
	return c.server, token, api.NewConnector(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}), nil
}
