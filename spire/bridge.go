package spire

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Bridge runs on a gateway, as the gateway's delegate on its SPIRE agent's
// Delegated Identity API, and keeps one directory per device of the
// gateway holding that device's current X509-SVID:
//
//	<Dir>/bundle.pem             the trust domain's CA bundle
//	<Dir>/<device>/svid.pem      the device's certificate chain
//	<Dir>/<device>/svid.key      its private key (PKCS #8, mode 0600)
//
// Files are replaced atomically on every rotation. A device whose identity
// is taken away (quarantined, removed from the topology) loses its
// directory as soon as the agent stops serving its SVID: whatever carries
// the files to the device finds nothing to carry. Delivering the files to
// the constrained devices themselves is the gateway's own business.
type Bridge struct {
	// AdminSocket is the agent's admin socket (Delegated Identity API).
	AdminSocket string
	// Dir holds the devices' directories; it is created 0700.
	Dir string
	// Devices returns the gateway's devices; it is asked every Resync.
	Devices func(context.Context) ([]string, error)
	// Resync is how often Devices is asked (default 30s).
	Resync time.Duration
	Logger *slog.Logger
}

// Run serves until ctx ends. It fails only if Dir or the socket cannot be
// used at all; a device list that cannot be read keeps the devices it had.
func (b *Bridge) Run(ctx context.Context) error {
	if b.Resync <= 0 {
		b.Resync = 30 * time.Second
	}
	if b.Logger == nil {
		b.Logger = slog.Default()
	}
	if err := os.MkdirAll(b.Dir, 0o700); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	abs, err := filepath.Abs(b.AdminSocket)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("bridge: agent admin socket %s: %w", b.AdminSocket, err)
	}
	defer conn.Close()
	client := delegatedv1.NewDelegatedIdentityClient(conn)

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(1)
	go func() { defer wg.Done(); b.watchBundle(ctx, client) }()
	running := map[string]context.CancelFunc{}
	for {
		devices, err := b.Devices(ctx)
		if err != nil && ctx.Err() == nil {
			b.Logger.Warn("bridge: cannot read the gateway's devices; keeping the ones it had", "err", err)
		}
		if err == nil {
			for name, stop := range running {
				if !slices.Contains(devices, name) {
					stop()
					delete(running, name)
				}
			}
			for _, name := range devices {
				if running[name] == nil && validDeviceDir(name) {
					dctx, stop := context.WithCancel(ctx)
					running[name] = stop
					wg.Add(1)
					go func() { defer wg.Done(); b.watchDevice(dctx, client, name) }()
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(b.Resync):
		}
	}
}

// validDeviceDir guards the file system against a device name that is not
// a plain directory name (the topology only admits DNS labels anyway).
func validDeviceDir(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, `/\`) && name != "bundle.pem"
}

// watchDevice keeps device's files equal to what the agent serves, and
// removes them when it serves nothing or the device is dropped.
func (b *Bridge) watchDevice(ctx context.Context, client delegatedv1.DelegatedIdentityClient, device string) {
	dir := filepath.Join(b.Dir, device)
	defer os.RemoveAll(dir)
	typ, value, _ := strings.Cut(DeviceSelector(device), ":")
	for ctx.Err() == nil {
		err := b.subscribe(ctx, client, device, typ, value, dir)
		if ctx.Err() != nil {
			return
		}
		// No identity (the entry is gone, or the agent has not synced it
		// yet) or a broken stream: no files until the agent serves again.
		if _, statErr := os.Stat(dir); statErr == nil {
			b.Logger.Info("bridge: device has no SVID now; its files are removed", "device", device, "err", err)
		}
		os.RemoveAll(dir)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (b *Bridge) subscribe(ctx context.Context, client delegatedv1.DelegatedIdentityClient, device, typ, value, dir string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.SubscribeToX509SVIDs(ctx, &delegatedv1.SubscribeToX509SVIDsRequest{
		Selectors: []*types.Selector{{Type: typ, Value: value}},
	})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if len(resp.X509Svids) == 0 {
			return errors.New("the agent serves no SVID for the device")
		}
		svid, err := svidOf(resp.X509Svids[0])
		if err != nil {
			return fmt.Errorf("an SVID that does not parse: %w", err)
		}
		certPEM, keyPEM, err := svid.Marshal()
		if err != nil {
			return err
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(dir, "svid.key"), keyPEM); err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(dir, "svid.pem"), certPEM); err != nil {
			return err
		}
		b.Logger.Info("bridge: device SVID written", "device", device, "spiffe_id", svid.ID.String(),
			"expires", svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
	}
}

// watchBundle keeps <Dir>/bundle.pem equal to the agent's trust bundle of
// its own trust domain (the first it sends).
func (b *Bridge) watchBundle(ctx context.Context, client delegatedv1.DelegatedIdentityClient) {
	last := ""
	for ctx.Err() == nil {
		stream, err := client.SubscribeToX509Bundles(ctx, &delegatedv1.SubscribeToX509BundlesRequest{})
		for err == nil {
			var resp *delegatedv1.SubscribeToX509BundlesResponse
			if resp, err = stream.Recv(); err != nil {
				break
			}
			err = b.writeBundle(resp.CaCertificates)
		}
		if ctx.Err() == nil {
			if err.Error() != last { // once per distinct failure, not every second
				b.Logger.Warn("bridge: trust bundle stream ended; retrying every second", "err", err)
				last = err.Error()
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (b *Bridge) writeBundle(bundles map[string][]byte) error {
	var out []byte
	keys := make([]string, 0, len(bundles))
	for td := range bundles {
		keys = append(keys, td)
	}
	slices.Sort(keys)
	for _, td := range keys {
		certs, err := x509.ParseCertificates(bundles[td])
		if err != nil {
			return fmt.Errorf("bundle of %s: %w", td, err)
		}
		for _, c := range certs {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
	}
	return writeAtomic(filepath.Join(b.Dir, "bundle.pem"), out)
}

// writeAtomic replaces path with data (mode 0600) in one rename.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}
