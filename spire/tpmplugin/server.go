// Package tpmplugin is the vigil_tpm SPIRE node attestor as SPIRE plugins:
// ServerPlugin, loaded by spire-server, has Vigil issue a nonce and verify
// the agent's TPM quote; AgentPlugin, loaded by spire-agent, quotes the
// TPM. The logic is internal/spiretpm's; this package is the SDK's glue
// (streams, HCL configuration, gRPC status codes). The binaries are
// cmd/vigil-tpm-attestor-server and cmd/vigil-tpm-attestor-agent; the operator's
// guide is docs/spire-tpm.md.
package tpmplugin

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginsdk"
	nodeattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/internal/spiretpm"
)

// Name is the plugin's name in server.conf and agent.conf: selectors and
// agent IDs depend on it, and the plugin is never told its own name.
const Name = "vigil_tpm"

var _ pluginsdk.NeedsLogger = (*ServerPlugin)(nil)

// ServerConfig is the server plugin's plugin_data.
type ServerConfig struct {
	// VigilAPI is a Vigil member's API address, or a list of the
	// members' addresses, tried in turn: a string or a list of strings.
	VigilAPI any `hcl:"vigil_api"`
	// TokenFile holds the token (a line of the members'
	// --spire-tpm-token-file; "name:token" or the bare token).
	TokenFile string `hcl:"token_file"`
	// CAFile is the PEM bundle the members' API certificates chain to;
	// empty for the system's roots.
	CAFile string `hcl:"ca_file"`
	// Timeout bounds each call to Vigil (default 10s).
	Timeout string `hcl:"timeout"`
}

// ServerPlugin is vigil_tpm's server side.
type ServerPlugin struct {
	nodeattestorv1.UnimplementedNodeAttestorServer
	configv1.UnimplementedConfigServer

	mu     sync.RWMutex
	server *spiretpm.Server
	log    hclog.Logger
}

// SetLogger takes SPIRE's logger: what the plugin logs lands in SPIRE's log.
func (p *ServerPlugin) SetLogger(l hclog.Logger) { p.log = l }

func (p *ServerPlugin) logger() hclog.Logger {
	if p.log == nil {
		return hclog.NewNullLogger()
	}
	return p.log
}

// Attest runs one attestation: payload, one challenge, the evidence.
func (p *ServerPlugin) Attest(stream nodeattestorv1.NodeAttestor_AttestServer) error {
	p.mu.RLock()
	srv := p.server
	p.mu.RUnlock()
	if srv == nil {
		return status.Error(codes.FailedPrecondition, "not configured")
	}
	ctx := stream.Context()
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	payload := req.GetPayload()
	if payload == nil {
		return status.Error(codes.InvalidArgument, "the first message must carry the payload")
	}
	att, challenge, err := srv.Begin(ctx, payload)
	if err != nil {
		return p.fail(err)
	}
	if err := stream.Send(&nodeattestorv1.AttestResponse{Response: &nodeattestorv1.AttestResponse_Challenge{Challenge: challenge}}); err != nil {
		return err
	}
	req, err = stream.Recv()
	if err != nil {
		return err
	}
	answer := req.GetChallengeResponse()
	if answer == nil {
		return p.fail(&spiretpm.Refusal{Subject: att.Subject, Reason: "the second message must answer the challenge"})
	}
	res, err := att.Finish(ctx, answer)
	if err != nil {
		return p.fail(err)
	}
	p.logger().Info("agent attested", "subject", att.Subject.String(), "firmware", res.Firmware, "agent_id", res.AgentID)
	return stream.Send(&nodeattestorv1.AttestResponse{Response: &nodeattestorv1.AttestResponse_AgentAttributes{
		AgentAttributes: &nodeattestorv1.AgentAttributes{SpiffeId: res.AgentID, SelectorValues: res.Selectors, CanReattest: true},
	}})
}

// fail logs why an attestation ended, with a reference, and gives SPIRE
// the status: refused agents PermissionDenied, Vigil out of reach
// Unavailable. SPIRE hands the message to the agent, which may be anyone
// who reaches its port: it carries the reference, never the reason (which
// would tell a stranger which gateways exist, their classes and
// quarantines); the reason is in the SPIRE server's log under the same
// reference.
func (p *ServerPlugin) fail(err error) error {
	ref := reference()
	var r *spiretpm.Refusal
	if errors.As(err, &r) {
		p.logger().Warn("agent refused", "subject", r.Subject.String(), "reason", r.Reason, "ref", ref)
		who := ""
		if r.Subject.Name != "" {
			who = r.Subject.String() + ": "
		}
		return status.Errorf(codes.PermissionDenied, "%sattestation refused; the reason is in the SPIRE server's log (ref %s)", who, ref)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	p.logger().Error("attestation could not be verified", "error", err.Error(), "ref", ref)
	return status.Errorf(codes.Unavailable, "Vigil could not verify the attestation now; the reason is in the SPIRE server's log (ref %s)", ref)
}

// reference is a short random ID tying an agent's error to the server's
// log line.
func reference() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Configure decodes plugin_data and swaps the configuration in. It does
// not call Vigil: SPIRE starts while Vigil is down.
func (p *ServerPlugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	srv, err := newServer(req.GetCoreConfiguration(), req.GetHclConfiguration())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	p.mu.Lock()
	p.server = srv
	p.mu.Unlock()
	return &configv1.ConfigureResponse{}, nil
}

// Validate reports what Configure would refuse (spire-server validate).
func (p *ServerPlugin) Validate(_ context.Context, req *configv1.ValidateRequest) (*configv1.ValidateResponse, error) {
	if _, err := newServer(req.GetCoreConfiguration(), req.GetHclConfiguration()); err != nil {
		return &configv1.ValidateResponse{Valid: false, Notes: []string{err.Error()}}, nil
	}
	return &configv1.ValidateResponse{Valid: true}, nil
}

func newServer(core *configv1.CoreConfiguration, hclText string) (*spiretpm.Server, error) {
	var cfg ServerConfig
	if err := hcl.Decode(&cfg, hclText); err != nil {
		return nil, fmt.Errorf("plugin_data: %v", err)
	}
	if err := unknownKeys(hclText, "vigil_api", "token_file", "ca_file", "timeout"); err != nil {
		return nil, err
	}
	td := core.GetTrustDomain()
	if td == "" {
		return nil, errors.New("the server's trust domain is not known")
	}
	if cfg.TokenFile == "" {
		return nil, errors.New("plugin_data: token_file is required (a line of the Vigil members' --spire-tpm-token-file)")
	}
	data, err := os.ReadFile(cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("plugin_data: token_file: %v", err)
	}
	token, err := firstToken(data)
	if err != nil {
		return nil, fmt.Errorf("plugin_data: token_file %s: %v", cfg.TokenFile, err)
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pemData, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("plugin_data: ca_file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("plugin_data: ca_file %s holds no PEM certificate", cfg.CAFile)
		}
		tlsConfig.RootCAs = pool
	}
	timeout := 10 * time.Second
	if cfg.Timeout != "" {
		if timeout, err = time.ParseDuration(cfg.Timeout); err != nil || timeout <= 0 {
			return nil, fmt.Errorf("plugin_data: timeout %q is not a positive duration such as \"10s\"", cfg.Timeout)
		}
	}
	servers, err := addresses(cfg.VigilAPI)
	if err != nil {
		return nil, err
	}
	client, err := spiretpm.NewClient(servers, token, tlsConfig, timeout)
	if err != nil {
		return nil, fmt.Errorf("plugin_data: vigil_api: %v", err)
	}
	return &spiretpm.Server{Vigil: client, TrustDomain: td}, nil
}

// addresses reads vigil_api: one address or a list of them.
func addresses(v any) ([]string, error) {
	const want = `plugin_data: vigil_api must be a Vigil member's API address or a list of them, such as "https://vigil-1.example:7070"`
	switch v := v.(type) {
	case nil:
		return nil, errors.New(want + " (it is required)")
	case string:
		return []string{v}, nil
	case []any:
		var out []string
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, errors.New(want)
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, errors.New(want)
}

// unknownKeys refuses keys plugin_data does not know: a misspelt
// ca_file must not fall back to the system's roots unnoticed.
func unknownKeys(hclText string, known ...string) error {
	var raw map[string]any
	if err := hcl.Decode(&raw, hclText); err != nil {
		return fmt.Errorf("plugin_data: %v", err)
	}
	var bad []string
	for k := range raw {
		if !slices.Contains(known, k) {
			bad = append(bad, k)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	slices.Sort(bad)
	return fmt.Errorf("plugin_data: unknown key %s (the keys are %s)", strings.Join(bad, ", "), strings.Join(known, ", "))
}

// firstToken reads the first token of a token file: "name:token" lines or
// a bare token, comments and blank lines skipped (Vigil's format).
func firstToken(data []byte) (string, error) {
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if _, tok, ok := strings.Cut(l, ":"); ok {
			return tok, nil
		}
		return l, nil
	}
	return "", errors.New("no token in the file")
}
