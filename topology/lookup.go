package topology

import (
	"cmp"
	"slices"
)

// Document is the validated document behind the index. Do not modify it.
func (ix *Index) Document() *Document { return ix.doc }

// TrustDomain is the SPIFFE trust domain of every identity in the document.
func (ix *Index) TrustDomain() string { return ix.doc.TrustDomain }

// Zone, Gateway, Class, Device and Service look objects up by name.
func (ix *Index) Zone(name string) (*Zone, bool)       { z, ok := ix.zones[name]; return z, ok }
func (ix *Index) Gateway(name string) (*Gateway, bool) { g, ok := ix.gateways[name]; return g, ok }
func (ix *Index) Class(name string) (*Class, bool)     { c, ok := ix.classes[name]; return c, ok }
func (ix *Index) Device(name string) (*Device, bool)   { d, ok := ix.devices[name]; return d, ok }
func (ix *Index) Service(name string) (*Service, bool) { s, ok := ix.services[name]; return s, ok }

// Flow looks up a flow's rule by name.
func (ix *Index) Flow(name string) (*Rule, bool) { r, ok := ix.rulesByName[name]; return r, ok }

// ServiceByHost finds the service whose hosts include host.
func (ix *Index) ServiceByHost(host string) (*Service, bool) {
	s, ok := ix.serviceByHost[host]
	return s, ok
}

// Counts of each kind of object.
func (ix *Index) NumZones() int    { return len(ix.zones) }
func (ix *Index) NumGateways() int { return len(ix.gateways) }
func (ix *Index) NumDevices() int  { return len(ix.devices) }
func (ix *Index) NumServices() int { return len(ix.services) }
func (ix *Index) NumFlows() int    { return len(ix.rules) }

// Exists reports whether the subject is in the document.
func (ix *Index) Exists(s Subject) bool {
	_, ok := ix.ZoneOf(s)
	return ok
}

// ZoneOf is the zone a subject belongs to; a device's is its gateway's.
func (ix *Index) ZoneOf(s Subject) (string, bool) {
	switch s.Kind {
	case KindDevice:
		if d, ok := ix.devices[s.Name]; ok {
			return ix.gateways[d.Gateway].Zone, true
		}
	case KindGateway:
		if g, ok := ix.gateways[s.Name]; ok {
			return g.Zone, true
		}
	case KindService:
		if svc, ok := ix.services[s.Name]; ok {
			return svc.Zone, true
		}
	}
	return "", false
}

// ClassOf is the device class whose attestation policy judges a subject's
// evidence: a device's class, or the class a gateway names; nil otherwise.
func (ix *Index) ClassOf(s Subject) *Class {
	switch s.Kind {
	case KindDevice:
		if d, ok := ix.devices[s.Name]; ok {
			return ix.classes[d.Class]
		}
	case KindGateway:
		if g, ok := ix.gateways[s.Name]; ok && g.Class != "" {
			return ix.classes[g.Class]
		}
	}
	return nil
}

// ResponseOf is the response policy in force for a subject: its class's
// for a device of the document, DefaultResponse() for anything else.
func (ix *Index) ResponseOf(s Subject) ClassResponse {
	if s.Kind == KindDevice {
		if d, ok := ix.devices[s.Name]; ok {
			return ix.classes[d.Class].Response
		}
	}
	return DefaultResponse()
}

// SPIFFEID is the identity of a subject of this document.
func (ix *Index) SPIFFEID(s Subject) (string, bool) {
	zone, ok := ix.ZoneOf(s)
	if !ok {
		return "", false
	}
	return SPIFFEID(ix.doc.TrustDomain, zone, s), true
}

// BySPIFFEID finds the subject an identity belongs to. The identity must
// name the subject's current zone: an ID from before a device moved zones
// does not resolve.
func (ix *Index) BySPIFFEID(id string) (Subject, bool) {
	zone, s, ok := parseSubjectID(ix.doc.TrustDomain, id)
	if !ok {
		return Subject{}, false
	}
	if z, ok := ix.ZoneOf(s); !ok || z != zone {
		return Subject{}, false
	}
	return s, true
}

// DevicesOf lists the devices behind a gateway, sorted by name.
func (ix *Index) DevicesOf(gateway string) []*Device { return ix.devicesByGateway[gateway] }

// GatewaysIn lists the gateways of a zone, sorted by name.
func (ix *Index) GatewaysIn(zone string) []*Gateway { return ix.gatewaysByZone[zone] }

// ServicesIn lists the services of a zone, sorted by name.
func (ix *Index) ServicesIn(zone string) []*Service { return ix.servicesByZone[zone] }

// Zones, Gateways and Services list every object of a kind, sorted by name.
func (ix *Index) Zones() []*Zone       { return sortedValues(ix.zones) }
func (ix *Index) Gateways() []*Gateway { return sortedValues(ix.gateways) }
func (ix *Index) Services() []*Service { return sortedValues(ix.services) }

// Devices lists every device sorted by name. The list is built once per
// index, on first use.
func (ix *Index) Devices() []*Device {
	ix.sortOnce.Do(func() { ix.sortedDevices = sortedValues(ix.devices) })
	return ix.sortedDevices
}

// Rules lists every flow in document order.
func (ix *Index) Rules() []*Rule {
	out := make([]*Rule, len(ix.rules))
	for i := range ix.rules {
		out[i] = &ix.rules[i]
	}
	return out
}

// RulesFrom lists, in document order, the flows whose from side selects s.
func (ix *Index) RulesFrom(s Subject) []*Rule { return ix.from.lookup(ix, s) }

// Sources are the subjects a rule's from side selects, as they reach a
// destination: services in person, devices through their gateways.
type Sources struct {
	// Gateways front at least one device the rule selects; sorted.
	Gateways []string
	// Services are selected services; sorted.
	Services []string
}

// SourcesOf returns what r's from side selects. r must be a rule of ix.
func (ix *Index) SourcesOf(r *Rule) *Sources {
	if s := ix.sources[r]; s != nil {
		return s
	}
	return &Sources{}
}

// RulesTo lists, in document order, the flows whose to side selects s.
func (ix *Index) RulesTo(s Subject) []*Rule { return ix.to.lookup(ix, s) }

func (ri *ruleIndex) lookup(ix *Index, s Subject) []*Rule {
	switch s.Kind {
	case KindService:
		return ri.services[s.Name]
	case KindDevice:
		d, ok := ix.devices[s.Name]
		if !ok {
			return nil
		}
		byGroup, byName := ri.groups[group{d.Class, d.Gateway}], ri.devices[s.Name]
		if len(byName) == 0 {
			return byGroup
		}
		if len(byGroup) == 0 {
			return byName
		}
		merged := append(slices.Clip(byGroup), byName...)
		slices.SortFunc(merged, func(a, b *Rule) int { return cmp.Compare(a.Position, b.Position) })
		return slices.CompactFunc(merged, func(a, b *Rule) bool { return a == b })
	}
	return nil
}

type named interface {
	*Zone | *Gateway | *Device | *Service
}

func sortedValues[T named](m map[string]T) []T {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]T, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out
}
