package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/internal/attestrpc"
	"github.com/vigil-iot/vigil/internal/signalrpc"
	"github.com/vigil-iot/vigil/topology"
)

// newGatewaySignalCmds builds "vigil gateway signal" (nothing for other
// kinds): a gateway reports a signal over the proxy port with its SVID.
func newGatewaySignalCmds(kind topology.Kind) []*cobra.Command {
	if kind != topology.KindGateway {
		return nil
	}
	var signal, detail, vigil, certFile, keyFile, caFile string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "signal DEVICE|gateway/NAME --signal NAME [--detail TEXT] --vigil HOST:PORT --cert F --key F --ca F",
		Short: "Report a signal (tamper, reboot, …) about one of the gateway's devices, as the gateway",
		Long: `Report a signal about a device behind the gateway, or about the gateway itself
(gateway/NAME), as the gateway: over gRPC (vigil.monitor.v1.Signals) on a member's
ext_authz port (--vigil), with the gateway's SVID (--cert, --key) as client
certificate and the trust bundle (--ca) to verify the member, which must present a
Vigil member's SVID of the gateway's trust domain. The member must run with
--proxy-tls-*. A tamper signal is critical: the device is quarantined unless its
class says otherwise.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sub := topology.DeviceSubject(args[0])
			if strings.Contains(args[0], "/") {
				var err error
				if sub, err = signalrpc.ParseSubject(args[0]); err != nil {
					return err
				}
			}
			if vigil == "" || certFile == "" || keyFile == "" || caFile == "" {
				return errors.New("--vigil, --cert, --key and --ca are required")
			}
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return fmt.Errorf("the gateway's SVID: %w", err)
			}
			leaf, err := x509.ParseCertificate(cert.Certificate[0])
			if err != nil {
				return fmt.Errorf("the gateway's SVID: %w", err)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" || leaf.URIs[0].Host == "" {
				return fmt.Errorf("%s is not an SVID: it needs exactly one spiffe:// URI", certFile)
			}
			bundle, err := os.ReadFile(caFile)
			if err != nil {
				return err
			}
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(bundle) {
				return fmt.Errorf("%s holds no PEM certificate", caFile)
			}
			tlsCfg := attestrpc.ClientTLS(cert, roots, leaf.URIs[0].Host)
			cc, err := grpc.NewClient(vigil, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
			if err != nil {
				return err
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			resp, err := signalrpc.NewClient(cc).Report(ctx, sub, api.SignalRequest{Signal: signal, Detail: detail})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "signal %s about %s accepted; judged by member %s\n", signal, sub, resp.Owner)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&signal, "signal", "", "the signal: tamper, reboot, power-loss, … (lowercase letters, digits and '-')")
	f.StringVar(&detail, "detail", "", "what the gateway saw (at most 1024 bytes)")
	f.StringVar(&vigil, "vigil", "", "a Vigil member's ext_authz address (host:port)")
	f.StringVar(&certFile, "cert", "", "PEM certificate chain of the gateway's SVID")
	f.StringVar(&keyFile, "key", "", "PEM private key of the gateway's SVID")
	f.StringVar(&caFile, "ca", "", "PEM CA bundle of the trust domain")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the member's answer")
	cmd.MarkFlagRequired("signal")
	return []*cobra.Command{cmd}
}
