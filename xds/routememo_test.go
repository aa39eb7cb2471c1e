package xds

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/vigil-iot/vigil/topology"
)

// TestSharedRoutesAreThoseOfTheGateway: every gateway's memoized route
// configuration is byte-identical to the one built for it alone; gateways
// share a message exactly when theirs are equal, and a gateway with a
// quarantined device gets its own, with the RBAC.
func TestSharedRoutesAreThoseOfTheGateway(t *testing.T) {
	doc := smartCityDoc(t)
	q := topology.DeviceSubject("aq-n1-001")
	for _, snap := range []*topology.Snapshot{snapshotOf(t, doc), snapshotOf(t, doc, q)} {
		encoded := map[string][]byte{}
		shared := map[string]any{}
		for _, gw := range doc.Gateways {
			p, err := planGateway(snap, gw.Name)
			if err != nil {
				t.Fatal(err)
			}
			rc, enc, err := sharedGatewayRoutes(snap.Index(), p)
			if err != nil {
				t.Fatal(err)
			}
			alone := gatewayRoutes(p)
			a, _ := proto.MarshalOptions{Deterministic: true}.Marshal(alone)
			b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(rc)
			if !bytes.Equal(a, b) {
				t.Errorf("%s: the shared route configuration differs from its own", gw.Name)
			}
			if want, _ := digestOf(alone); enc.digest != want {
				t.Errorf("%s: digest of the shared configuration is not its own", gw.Name)
			}
			if !bytes.Equal(enc.bytes(), a) {
				t.Errorf("%s: the shared configuration's encoding is not its own", gw.Name)
			}
			encoded[gw.Name], shared[gw.Name] = b, rc
		}
		for _, x := range doc.Gateways {
			for _, y := range doc.Gateways {
				same := bytes.Equal(encoded[x.Name], encoded[y.Name])
				quarantines := snap.SubjectState(q) != nil && (x.Name == "gw-north-1" || y.Name == "gw-north-1")
				if x.Name != y.Name && same && !quarantines && shared[x.Name] != shared[y.Name] {
					t.Errorf("%s and %s have equal routes but do not share them", x.Name, y.Name)
				}
				if !same && shared[x.Name] == shared[y.Name] {
					t.Errorf("%s and %s share routes that differ", x.Name, y.Name)
				}
			}
		}
		distinct := map[any]bool{}
		for _, rc := range shared {
			distinct[rc] = true
		}
		t.Logf("%d gateways, %d distinct route configurations", len(shared), len(distinct))
		if len(distinct) == len(shared) {
			t.Error("no two gateways share routes; the smart city's do")
		}
		if snap.SubjectState(q) != nil && !bytes.Contains(encoded["gw-north-1"], []byte("aq-n1-001")) {
			t.Error("gw-north-1's routes do not deny its quarantined device")
		}
	}
}
