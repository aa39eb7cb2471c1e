package spire

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	delegatedv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// FetchDeviceSVID asks a gateway's SPIRE agent, through its Delegated
// Identity API (the agent's admin socket), for the X509-SVID of one of the
// gateway's devices: the entry with selector "vigil:device:<device>". The
// caller must hold an SVID whose SPIFFE ID is among the agent's
// authorized_delegates (the gateway's own, given by its binding's
// selectors). It returns the first SVID the agent sends. Until the agent
// has synced the entries (seconds after it attests or an entry is made) it
// refuses the caller with PermissionDenied; FetchDeviceSVID asks again
// every 250ms until ctx ends.
func FetchDeviceSVID(ctx context.Context, adminSocket, device string) (*x509svid.SVID, error) {
	abs, err := filepath.Abs(adminSocket)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("spire agent admin socket %s: %w", adminSocket, err)
	}
	defer conn.Close()
	client := delegatedv1.NewDelegatedIdentityClient(conn)
	for {
		svid, err := fetchOnce(ctx, client, device)
		if status.Code(err) != codes.PermissionDenied {
			return svid, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func fetchOnce(ctx context.Context, client delegatedv1.DelegatedIdentityClient, device string) (*x509svid.SVID, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	typ, value, _ := strings.Cut(DeviceSelector(device), ":")
	stream, err := client.SubscribeToX509SVIDs(ctx, &delegatedv1.SubscribeToX509SVIDsRequest{
		Selectors: []*types.Selector{{Type: typ, Value: value}},
	})
	if err != nil {
		return nil, err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		if len(resp.X509Svids) == 0 {
			continue
		}
		return svidOf(resp.X509Svids[0])
	}
}

// svidOf parses an SVID the Delegated Identity API sent.
func svidOf(s *delegatedv1.X509SVIDWithKey) (*x509svid.SVID, error) {
	var chain []byte
	for _, c := range s.GetX509Svid().GetCertChain() {
		chain = append(chain, c...)
	}
	if len(chain) == 0 {
		return nil, errors.New("delegated identity: an SVID without certificates")
	}
	return x509svid.ParseRaw(chain, s.GetX509SvidKey())
}
