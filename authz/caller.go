package authz

import (
	"fmt"

	"github.com/vigil-iot/vigil/topology"
)

// callerMayAsk says why the proxy whose verified SPIFFE ID is caller may not
// ask about res ("" when it may). A gateway's Envoy sees only its own
// devices; a cloud edge's (spiffe://<td>/zone/<zone>/edge/<name>) fronts
// only the services of its zone. Anyone else may not ask at all.
func callerMayAsk(ix *topology.Index, caller string, res *resolution) string {
	if caller == "" {
		return "the proxy asking presented no SPIFFE ID in a verified client certificate"
	}
	if sub, ok := ix.BySPIFFEID(caller); ok && sub.Kind == topology.KindGateway {
		if res.sub.Kind != topology.KindDevice || res.gw == nil || res.gw.Name != sub.Name {
			return fmt.Sprintf("gateway %s may ask only about its own devices", sub.Name)
		}
		return ""
	}
	if zone, ok := edgeZone(ix, caller); ok {
		if res.svc == nil || res.svc.Zone != zone {
			return fmt.Sprintf("the cloud edge %s may ask only about services of zone %s", caller, zone)
		}
		return ""
	}
	return fmt.Sprintf("%s is neither a gateway of this topology nor a cloud edge of one of its zones", caller)
}

// callerIsProxy says why caller may not ask anything ("" when it is a
// gateway of ix or a cloud edge of one of its zones).
func callerIsProxy(ix *topology.Index, caller string) string {
	if caller == "" {
		return "the proxy asking presented no SPIFFE ID in a verified client certificate"
	}
	if sub, ok := ix.BySPIFFEID(caller); ok && sub.Kind == topology.KindGateway {
		return ""
	}
	if _, ok := edgeZone(ix, caller); ok {
		return ""
	}
	return fmt.Sprintf("%s is neither a gateway of this topology nor a cloud edge of one of its zones", caller)
}

// edgeZone parses a cloud edge's identity: spiffe://<td>/zone/<zone>/edge/<name>
// with a zone of ix and a DNS-label name.
func edgeZone(ix *topology.Index, id string) (string, bool) {
	zone, kind, name, ok := topology.ParseZonedID(ix.TrustDomain(), id)
	if !ok || kind != "edge" || !topology.IsName(name) {
		return "", false
	}
	if _, ok := ix.Zone(zone); !ok {
		return "", false
	}
	return zone, true
}
