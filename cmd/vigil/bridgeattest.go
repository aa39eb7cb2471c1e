package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/vigil-iot/vigil/internal/attestrpc"
)

// bridgeAttestFlags are the bridge's re-attestation flags.
type bridgeAttestFlags struct {
	evidenceCmd    string
	vigil          string
	workloadSocket string
	every          time.Duration
}

func (f *bridgeAttestFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.evidenceCmd, "evidence-cmd", "", "command that prints a device's evidence JSON; run with the device name and the nonce appended (turns re-attestation on)")
	fl.StringVar(&f.vigil, "vigil", "", "a Vigil member's ext_authz address (host:port), where the gateway attests its devices over mutual TLS")
	fl.StringVar(&f.workloadSocket, "workload-socket", "", "the gateway's SPIRE agent Workload API socket, for the gateway's SVID")
	fl.DurationVar(&f.every, "attest-every", 12*time.Hour, "how often each device re-attests (80-100% of it, jittered); keep it below its class's maxAge")
}

// run attests the devices until ctx ends; nothing when --evidence-cmd is
// not set.
func (f *bridgeAttestFlags) run(ctx context.Context, devices func(context.Context) ([]string, error), log *slog.Logger) error {
	if f.evidenceCmd == "" {
		return nil
	}
	if f.vigil == "" || f.workloadSocket == "" {
		return fmt.Errorf("--evidence-cmd needs --vigil (a member's ext_authz address) and --workload-socket (the gateway's SVID)")
	}
	abs, err := filepath.Abs(f.workloadSocket)
	if err != nil {
		return err
	}
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+abs)))
	if err != nil {
		return fmt.Errorf("gateway SVID from %s: %w", f.workloadSocket, err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		return err
	}
	td := svid.ID.TrustDomain()
	// Only a Vigil member of the trust domain may answer.
	member := tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if id.MemberOf(td) && strings.HasPrefix(id.Path(), "/vigil/node/") {
			return nil
		}
		return fmt.Errorf("%s is not a Vigil member", id)
	})
	cfg := tlsconfig.MTLSClientConfig(src, src, member)
	cfg.MinVersion = tls.VersionTLS12
	cc, err := grpc.NewClient(f.vigil, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return err
	}
	defer cc.Close()
	r := &attestrpc.Reattester{Client: attestrpc.NewClient(cc), EvidenceCmd: strings.Fields(f.evidenceCmd),
		Devices: devices, Every: f.every, Logger: log}
	log.Info("re-attesting the gateway's devices", "vigil", f.vigil, "every", f.every, "as", svid.ID.String())
	return r.Run(ctx)
}
