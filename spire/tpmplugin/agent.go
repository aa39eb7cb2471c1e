package tpmplugin

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginsdk"
	nodeattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/agent/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vigil-iot/vigil/internal/spiretpm"
	"github.com/vigil-iot/vigil/topology"
)

var _ pluginsdk.NeedsLogger = (*AgentPlugin)(nil)

// AgentConfig is the agent plugin's plugin_data.
type AgentConfig struct {
	// Subject is who the agent attests as: "gateway/<name>" or
	// "device/<name>".
	Subject string `hcl:"subject"`
	// TPM is the TPM: a device such as /dev/tpmrm0 (the default), or
	// swtpm:host=H,port=P for a TCP TPM simulator.
	TPM string `hcl:"tpm"`
	// AKHandle is the persistent handle of the AK enrolled in Vigil
	// (default 0x81010002, `vigil attest tpm ak-public`'s); an ECDSA P-256
	// AK is created there when the handle is empty.
	AKHandle string `hcl:"ak_handle"`
	// EventLog is the firmware event log: the TCG binary log
	// (/sys/kernel/security/tpm0/binary_bios_measurements) or a JSON list
	// of events; empty for none.
	EventLog string `hcl:"event_log"`
	// EKCert, optional, is the TPM's EK certificate (DER or PEM), sent
	// when set.
	EKCert string `hcl:"ek_cert"`
}

// OpenTPM makes the TPM an agent configuration names; tests replace it.
type OpenTPM func(cfg AgentConfig) (spiretpm.TPM, error)

// AgentPlugin is vigil_tpm's agent side.
type AgentPlugin struct {
	nodeattestorv1.UnimplementedNodeAttestorServer
	configv1.UnimplementedConfigServer

	// Open makes the TPM; nil means OpenDevice.
	Open OpenTPM

	mu    sync.RWMutex
	agent *spiretpm.Agent
	log   hclog.Logger
}

// SetLogger takes SPIRE's logger.
func (p *AgentPlugin) SetLogger(l hclog.Logger) { p.log = l }

// AidAttestation sends the payload, then answers each challenge.
func (p *AgentPlugin) AidAttestation(stream nodeattestorv1.NodeAttestor_AidAttestationServer) error {
	p.mu.RLock()
	a := p.agent
	p.mu.RUnlock()
	if a == nil {
		return status.Error(codes.FailedPrecondition, "not configured")
	}
	payload, err := a.Payload()
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if err := stream.Send(&nodeattestorv1.PayloadOrChallengeResponse{Data: &nodeattestorv1.PayloadOrChallengeResponse_Payload{Payload: payload}}); err != nil {
		return err
	}
	for {
		ch, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		answer, err := a.Answer(ch.GetChallenge())
		if err != nil {
			if p.log != nil {
				p.log.Error("cannot answer the server's challenge", "error", err.Error())
			}
			return status.Error(codes.Internal, err.Error())
		}
		if err := stream.Send(&nodeattestorv1.PayloadOrChallengeResponse{Data: &nodeattestorv1.PayloadOrChallengeResponse_ChallengeResponse{ChallengeResponse: answer}}); err != nil {
			return err
		}
	}
}

// Configure decodes plugin_data, reaches the TPM and reads the AK
// (creating it when its handle is empty), so that a misconfigured agent
// fails at start with the reason.
func (p *AgentPlugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	a, err := p.newAgent(req.GetHclConfiguration(), true)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	p.mu.Lock()
	p.agent = a
	p.mu.Unlock()
	return &configv1.ConfigureResponse{}, nil
}

// Validate reports what Configure would refuse, without touching the TPM.
func (p *AgentPlugin) Validate(_ context.Context, req *configv1.ValidateRequest) (*configv1.ValidateResponse, error) {
	if _, err := p.newAgent(req.GetHclConfiguration(), false); err != nil {
		return &configv1.ValidateResponse{Valid: false, Notes: []string{err.Error()}}, nil
	}
	return &configv1.ValidateResponse{Valid: true}, nil
}

func (p *AgentPlugin) newAgent(hclText string, probe bool) (*spiretpm.Agent, error) {
	var cfg AgentConfig
	if err := hcl.Decode(&cfg, hclText); err != nil {
		return nil, fmt.Errorf("plugin_data: %v", err)
	}
	if err := unknownKeys(hclText, "subject", "tpm", "ak_handle", "event_log", "ek_cert"); err != nil {
		return nil, err
	}
	kind, name, ok := strings.Cut(cfg.Subject, "/")
	k, err := topology.ParseKind(kind)
	if !ok || err != nil || (k != topology.KindGateway && k != topology.KindDevice) || !topology.IsName(name) {
		return nil, fmt.Errorf("plugin_data: subject %q must be \"gateway/<name>\" or \"device/<name>\"", cfg.Subject)
	}
	if cfg.TPM == "" {
		cfg.TPM = "/dev/tpmrm0"
	}
	if cfg.AKHandle == "" {
		cfg.AKHandle = DefaultAKHandle
	}
	a := &spiretpm.Agent{Subject: topology.Subject{Kind: k, Name: name}}
	if cfg.EKCert != "" {
		data, err := os.ReadFile(cfg.EKCert)
		if err != nil {
			return nil, fmt.Errorf("plugin_data: ek_cert: %v", err)
		}
		if blk, _ := pem.Decode(data); blk != nil {
			if blk.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("plugin_data: ek_cert %s: a PEM %s, want CERTIFICATE", cfg.EKCert, blk.Type)
			}
			data = blk.Bytes
		}
		a.EKCert = data
	}
	if cfg.EventLog != "" && probe {
		if _, err := os.Stat(cfg.EventLog); err != nil {
			return nil, fmt.Errorf("plugin_data: event_log: %v", err)
		}
	}
	open := p.Open
	if open == nil {
		open = OpenDevice
	}
	tpm, err := open(cfg)
	if err != nil {
		return nil, fmt.Errorf("plugin_data: %v", err)
	}
	a.TPM = tpm
	if probe {
		if m, ok := tpm.(akMaker); ok {
			created, err := m.ensureAK()
			if err != nil {
				return nil, fmt.Errorf("the AK at %s on %s: %v", cfg.AKHandle, cfg.TPM, err)
			}
			if created && p.log != nil {
				p.log.Warn("created an attestation key; enroll it before this agent can attest: vigil attest tpm ak-public --tpm TPM --ak-handle HANDLE > ak.pem; vigil "+a.Subject.Kind.String()+" enroll "+a.Subject.Name+" --tpm-ak ak.pem",
					"tpm", cfg.TPM, "ak_handle", cfg.AKHandle)
			}
		}
		if _, err := tpm.AKPublicPEM(); err != nil {
			return nil, fmt.Errorf("the AK at %s on %s: %v", cfg.AKHandle, cfg.TPM, err)
		}
	}
	return a, nil
}
