package topology

import (
	"cmp"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"
)

// maxReportedErrors bounds a ValidationError; a document with more problems
// than this is reported with a final line that counts the rest.
const maxReportedErrors = 1000

// Class is a validated DeviceClass with its values parsed.
type Class struct {
	*DeviceClass
	// MaxAge is how fresh an attestation must be; zero means the class
	// requires none.
	MaxAge time.Duration
	// Rate is the per-device default budget across all flows; zero if none.
	Rate Rate
	// Attestation is the parsed attestation policy (zero when MaxAge is).
	Attestation ClassAttestation
	// Response is the parsed response policy, defaults filled in.
	Response ClassResponse
}

// ClassResponse is a class's response policy (ResponsePolicy) with its
// values parsed and the defaults filled in, so readers never parse it.
type ClassResponse struct {
	// RestrictAt is the risk from which only essential flows are allowed.
	RestrictAt int
	// QuarantineAt is the risk from which the playbook runs; never below
	// RestrictAt.
	QuarantineAt int
	// Approve is set for mode: approve (an operator approves quarantines).
	Approve bool
	// Learning is how long after the class first appears its findings
	// only alert; zero for none.
	Learning time.Duration
	// NeverQuarantine holds the devices of the class that the automatic
	// playbook never quarantines; nil when there are none.
	NeverQuarantine map[string]bool
}

// DefaultResponse is the response policy of a class that gives none, and
// of subjects without a class (gateways, services).
func DefaultResponse() ClassResponse {
	return ClassResponse{RestrictAt: DefaultRestrictAt, QuarantineAt: DefaultQuarantineAt}
}

// Restricts reports whether a risk score restricts a subject to its
// essential flows.
func (r ClassResponse) Restricts(risk int) bool { return risk >= r.RestrictAt }

// Quarantines reports whether a risk score reaches the playbook.
func (r ClassResponse) Quarantines(risk int) bool { return risk >= r.QuarantineAt }

// ClassAttestation is a class's attestation policy with its values parsed.
type ClassAttestation struct {
	// Formats accepted; never empty for a class that requires attestation.
	Formats []string
	// PCRs a TPM quote must cover, sorted; [16] by default.
	PCRs []int
	// DICERoots parsed from the document's PEM.
	DICERoots []*x509.Certificate
	// EKRoots parsed from the document's PEM: the CAs EK certificates
	// must chain to; none means the class refuses EK enrollment.
	EKRoots []*x509.Certificate
	// Quarantine is set for onFailure: quarantine.
	Quarantine bool
	// SPIRE is how the class's subjects join SPIRE: "", SPIREOnboard or
	// SPIRERequired.
	SPIRE    string
	Firmware []FirmwareRef
}

// SPIRETPM reports whether the class's gateways, and its devices of
// identity agent, join SPIRE through the vigil_tpm node attestor.
func (c *Class) SPIRETPM() bool { return c != nil && c.Attestation.SPIRE != "" }

// OwnAgent reports whether the class's devices run their own SPIRE agent
// (identity: agent) rather than get their identity through their gateway.
func (c *Class) OwnAgent() bool { return c.Identity == IdentityAgent }

// Rule is a validated Flow with its matchers and rate parsed.
type Rule struct {
	*Flow
	// Position is the flow's index in the document.
	Position int
	Methods  []string
	Paths    []PathMatch
	Rate     Rate
}

// AllowsRequest reports whether method and path satisfy the flow's http
// match; a flow without one allows any request.
func (r *Rule) AllowsRequest(method, path string) bool {
	if len(r.Methods) > 0 && !slices.Contains(r.Methods, method) {
		return false
	}
	if len(r.Paths) == 0 {
		return true
	}
	for _, p := range r.Paths {
		if p.Matches(path) {
			return true
		}
	}
	return false
}

type group struct{ class, gateway string }

// ruleIndex finds the rules one side (from or to) of which selects a subject.
type ruleIndex struct {
	groups   map[group][]*Rule  // devices, by class and gateway
	devices  map[string][]*Rule // devices named in a selector
	services map[string][]*Rule
}

// Index is a validated document with lookup indexes. It is immutable and
// safe for concurrent use; the pointers it hands out point into it and must
// not be modified.
type Index struct {
	doc              *Document
	zones            map[string]*Zone
	gateways         map[string]*Gateway
	classes          map[string]*Class
	devices          map[string]*Device
	services         map[string]*Service
	serviceByHost    map[string]*Service
	rules            []Rule
	rulesByName      map[string]*Rule
	gatewaysByZone   map[string][]*Gateway
	servicesByZone   map[string][]*Service
	devicesByGateway map[string][]*Device
	from, to         ruleIndex
	// sources holds, per rule, the gateways and services its from side
	// selects (a gateway when it fronts a selected device).
	sources map[*Rule]*Sources

	sortOnce      sync.Once
	sortedDevices []*Device
}

// EmptyIndex is the index of a store that holds no document yet.
func EmptyIndex() *Index {
	ix, err := NewIndex(&Document{APIVersion: APIVersion, TrustDomain: "unset.invalid"})
	if err != nil {
		panic(err)
	}
	return ix
}

// NewIndex validates doc and indexes it. It reports every problem at once as
// a *ValidationError. The index keeps doc; the caller must not change it.
func NewIndex(doc *Document) (*Index, error) {
	b := &builder{ix: &Index{
		doc:              doc,
		zones:            make(map[string]*Zone, len(doc.Zones)),
		gateways:         make(map[string]*Gateway, len(doc.Gateways)),
		classes:          make(map[string]*Class, len(doc.DeviceClasses)),
		devices:          make(map[string]*Device, len(doc.Devices)),
		services:         make(map[string]*Service, len(doc.Services)),
		serviceByHost:    make(map[string]*Service),
		rulesByName:      make(map[string]*Rule, len(doc.Flows)),
		gatewaysByZone:   make(map[string][]*Gateway),
		servicesByZone:   make(map[string][]*Service),
		devicesByGateway: make(map[string][]*Device),
	}}
	b.header()
	b.zones()
	b.gateways()
	b.classes()
	b.gatewayClasses()
	b.devices()
	b.services()
	b.flows()
	if err := b.err(); err != nil {
		return nil, err
	}
	b.indexRules()
	return b.ix, nil
}

type builder struct {
	ix      *Index
	errs    []FieldError
	dropped int
	groups  map[group]bool
	// edgePorts maps zone/port to the service its cloud edge fronts there.
	edgePorts map[string]string
	// deviceClass maps the document's device names to their classes (the
	// first device of a name), for checks made before devices are indexed.
	deviceClass map[string]string
}

func (b *builder) errorf(path, format string, args ...any) {
	if len(b.errs) >= maxReportedErrors {
		b.dropped++
		return
	}
	b.errs = append(b.errs, FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
}

func (b *builder) err() error {
	if len(b.errs) == 0 {
		return nil
	}
	errs := b.errs
	if b.dropped > 0 {
		errs = append(errs, FieldError{Message: fmt.Sprintf("%d more errors not shown", b.dropped)})
	}
	return &ValidationError{Errors: errs}
}

func (b *builder) header() {
	d := b.ix.doc
	switch {
	case d.APIVersion == "":
		b.errorf("apiVersion", "is required (want %q)", APIVersion)
	case d.APIVersion != APIVersion:
		b.errorf("apiVersion", "unsupported version %q (want %q)", d.APIVersion, APIVersion)
	}
	if !isTrustDomain(d.TrustDomain) {
		b.errorf("trustDomain", "%q is not a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')", d.TrustDomain)
	}
}

// name checks a name and registers it in seen; it reports false when the
// object must not be indexed.
func name[T any](b *builder, path, kind, n string, seen map[string]T, v T) bool {
	if !IsName(n) {
		if n == "" {
			b.errorf(path+".name", "is required")
		} else {
			b.errorf(path+".name", "%q is not a valid name (lowercase letters, digits and '-', at most 63)", n)
		}
		return false
	}
	if _, dup := seen[n]; dup {
		b.errorf(path+".name", "duplicate %s name %q", kind, n)
		return false
	}
	seen[n] = v
	return true
}

func (b *builder) labels(path string, l Labels) {
	badKey := func(k string) bool { return k == "" || len(k) > 253 || strings.ContainsAny(k, " \t\r\n\"'=") }
	badValue := func(v string) bool { return len(v) > 253 || strings.ContainsAny(v, "\r\n") }
	ok := true
	for k, v := range l {
		ok = ok && !badKey(k) && !badValue(v)
	}
	if ok {
		return
	}
	// Map order is random; report in key order so that one document always
	// gives the same errors.
	for _, k := range slices.Sorted(maps.Keys(l)) {
		if badKey(k) {
			b.errorf(path+".labels", "invalid label key %q", k)
		}
		if badValue(l[k]) {
			b.errorf(path+".labels."+k, "label value must be one line of at most 253 characters")
		}
	}
}

func (b *builder) zones() {
	for i := range b.ix.doc.Zones {
		z := &b.ix.doc.Zones[i]
		path := fmt.Sprintf("zones[%d]", i)
		name(b, path, "zone", z.Name, b.ix.zones, z)
		b.labels(path, z.Labels)
	}
}

func (b *builder) gateways() {
	for i := range b.ix.doc.Gateways {
		g := &b.ix.doc.Gateways[i]
		path := fmt.Sprintf("gateways[%d]", i)
		b.labels(path, g.Labels)
		if _, ok := b.ix.zones[g.Zone]; !ok {
			b.unknown(path+".zone", "zone", g.Zone)
		}
		if name(b, path, "gateway", g.Name, b.ix.gateways, g) {
			b.ix.gatewaysByZone[g.Zone] = append(b.ix.gatewaysByZone[g.Zone], g)
		}
	}
}

// gatewayClasses checks the gateways' classes, once classes are indexed:
// a gateway's class must exist and ask for attestation.
func (b *builder) gatewayClasses() {
	for i := range b.ix.doc.Gateways {
		g := &b.ix.doc.Gateways[i]
		if g.Class == "" {
			continue
		}
		path := fmt.Sprintf("gateways[%d].class", i)
		c, ok := b.ix.classes[g.Class]
		switch {
		case !ok:
			b.unknown(path, "device class", g.Class)
		case c.MaxAge == 0:
			b.errorf(path, "class %q sets no attestation; only a class's attestation applies to a gateway", g.Class)
		}
	}
}

func (b *builder) unknown(path, kind, n string) {
	if n == "" {
		b.errorf(path, "is required")
		return
	}
	b.errorf(path, "unknown %s %q", kind, n)
}

// attestationPolicy parses what a class asks of its devices' evidence.
func (b *builder) attestationPolicy(path string, a *AttestationPolicy) ClassAttestation {
	ca := ClassAttestation{Firmware: a.Firmware, Formats: a.Formats, Quarantine: a.OnFailure == OnFailureQuarantine}
	if len(ca.Formats) == 0 {
		ca.Formats = []string{AttestTPM2Quote, AttestDICE, AttestEAT}
	}
	for j, f := range a.Formats {
		switch f {
		case AttestTPM2Quote, AttestDICE, AttestEAT:
		default:
			b.errorf(fmt.Sprintf("%s.formats[%d]", path, j), "unknown evidence format %q (want %s, %s or %s)", f, AttestTPM2Quote, AttestDICE, AttestEAT)
		}
		if slices.Index(a.Formats, f) != j {
			b.errorf(fmt.Sprintf("%s.formats[%d]", path, j), "format %q is listed twice", f)
		}
	}
	ca.PCRs = slices.Clone(a.PCRs)
	if len(ca.PCRs) == 0 {
		ca.PCRs = []int{16}
	}
	for j, p := range a.PCRs {
		if p < 0 || p > 23 {
			b.errorf(fmt.Sprintf("%s.pcrs[%d]", path, j), "PCR %d does not exist (0 to 23)", p)
		}
	}
	slices.Sort(ca.PCRs)
	ca.PCRs = slices.Compact(ca.PCRs)
	ca.DICERoots = b.pemCertificates(path+".diceRoots", a.DICERoots)
	ca.EKRoots = b.pemCertificates(path+".ekRoots", a.EKRoots)
	if slices.Contains(a.Formats, AttestDICE) && len(a.DICERoots) == 0 {
		b.errorf(path+".diceRoots", "format dice needs at least one root")
	}
	switch a.OnFailure {
	case "", OnFailureDeny, OnFailureQuarantine:
	default:
		b.errorf(path+".onFailure", "unknown action %q (want %q, the default, or %q)", a.OnFailure, OnFailureDeny, OnFailureQuarantine)
	}
	switch a.SPIRE {
	case "", SPIREOnboard, SPIRERequired:
		ca.SPIRE = a.SPIRE
	default:
		b.errorf(path+".spire", "unknown value %q (want %q or %q; leave it out for join tokens)", a.SPIRE, SPIREOnboard, SPIRERequired)
	}
	if a.SPIRE != "" && !slices.Contains(ca.Formats, AttestTPM2Quote) {
		b.errorf(path+".spire", "the vigil_tpm node attestor sends TPM quotes: formats must include %q", AttestTPM2Quote)
	}
	return ca
}

// pemCertificates parses a list of PEM certificates (a class's roots),
// reporting each bad one at path[j].
func (b *builder) pemCertificates(path string, list []string) []*x509.Certificate {
	var out []*x509.Certificate
	for j, pemText := range list {
		blk, rest := pem.Decode([]byte(pemText))
		if blk == nil || blk.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) != 0 {
			b.errorf(fmt.Sprintf("%s[%d]", path, j), "must be exactly one PEM CERTIFICATE block")
			continue
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			b.errorf(fmt.Sprintf("%s[%d]", path, j), "not an X.509 certificate: %v", err)
			continue
		}
		out = append(out, cert)
	}
	return out
}

func (b *builder) classes() {
	for i := range b.ix.doc.DeviceClasses {
		dc := &b.ix.doc.DeviceClasses[i]
		path := fmt.Sprintf("deviceClasses[%d]", i)
		c := &Class{DeviceClass: dc}
		b.labels(path, dc.Labels)
		switch dc.Identity {
		case "", IdentityDelegated, IdentityAgent:
		default:
			b.errorf(path+".identity", "unknown identity %q (want %q, the default, or %q)", dc.Identity, IdentityDelegated, IdentityAgent)
		}
		if a := dc.Attestation; a != nil {
			d, err := ParseMaxAge(a.MaxAge)
			if err != nil {
				b.errorf(path+".attestation.maxAge", "%v", err)
			}
			c.MaxAge = d
			c.Attestation = b.attestationPolicy(path+".attestation", a)
			if len(a.Firmware) == 0 {
				b.errorf(path+".attestation.firmware", "at least one firmware reference value is required")
			}
			for j, fw := range a.Firmware {
				fp := fmt.Sprintf("%s.attestation.firmware[%d]", path, j)
				if strings.TrimSpace(fw.Version) == "" || len(fw.Version) > 128 {
					b.errorf(fp+".version", "is required (at most 128 characters)")
				}
				if !isSHA256Hex(fw.SHA256) {
					b.errorf(fp+".sha256", "must be 64 lowercase hex digits")
				}
			}
		}
		c.Response = b.responsePolicy(path+".response", dc.Name, dc.Response)
		if dc.RateLimit != "" {
			r, err := ParseRate(dc.RateLimit)
			if err != nil {
				b.errorf(path+".rateLimit", "%v", err)
			}
			c.Rate = r
		}
		name(b, path, "device class", dc.Name, b.ix.classes, c)
	}
}

// responsePolicy parses what the monitor may do about the devices of
// class, filling in the defaults.
func (b *builder) responsePolicy(path, class string, p *ResponsePolicy) ClassResponse {
	cr := DefaultResponse()
	if p == nil {
		return cr
	}
	riskOK := true
	risk := func(field string, v *int, dst *int) {
		if v == nil {
			return
		}
		if *v < 1 || *v > 100 {
			b.errorf(path+"."+field, "risk %d is out of range (1 to 100)", *v)
			riskOK = false
			return
		}
		*dst = *v
	}
	risk("restrictAt", p.RestrictAt, &cr.RestrictAt)
	risk("quarantineAt", p.QuarantineAt, &cr.QuarantineAt)
	if riskOK && cr.RestrictAt > cr.QuarantineAt {
		if p.QuarantineAt == nil {
			b.errorf(path+".restrictAt", "restrictAt %d is above quarantineAt %d (the default); give a quarantineAt of at least %d", cr.RestrictAt, cr.QuarantineAt, cr.RestrictAt)
		} else if p.RestrictAt == nil {
			b.errorf(path+".quarantineAt", "quarantineAt %d is below restrictAt %d (the default); give a restrictAt of at most %d", cr.QuarantineAt, cr.RestrictAt, cr.QuarantineAt)
		} else {
			b.errorf(path+".restrictAt", "restrictAt %d is above quarantineAt %d", cr.RestrictAt, cr.QuarantineAt)
		}
	}
	switch p.Mode {
	case "", ResponseAuto:
	case ResponseApprove:
		cr.Approve = true
	default:
		b.errorf(path+".mode", "unknown mode %q (want %q, the default, or %q)", p.Mode, ResponseAuto, ResponseApprove)
	}
	if p.Learning != "" {
		d, err := ParseLearning(p.Learning)
		if err != nil {
			b.errorf(path+".learning", "%v", err)
		}
		cr.Learning = d
	}
	for j, n := range p.NeverQuarantine {
		np := fmt.Sprintf("%s.neverQuarantine[%d]", path, j)
		if slices.Index(p.NeverQuarantine, n) != j {
			b.errorf(np, "device %q is listed twice", n)
			continue
		}
		other, ok := b.classOfDevice(n)
		switch {
		case !ok:
			b.unknown(np, "device", n)
		case other != class:
			b.errorf(np, "device %q is of class %q; only devices of class %q may be listed", n, other, class)
		default:
			if cr.NeverQuarantine == nil {
				cr.NeverQuarantine = make(map[string]bool, len(p.NeverQuarantine))
			}
			cr.NeverQuarantine[n] = true
		}
	}
	return cr
}

// classOfDevice is the class of the document's device named n (the first
// of that name), read from the document: classes are checked before
// devices are indexed, so that errors come in document order.
func (b *builder) classOfDevice(n string) (string, bool) {
	if b.deviceClass == nil {
		b.deviceClass = make(map[string]string, len(b.ix.doc.Devices))
		for i := range b.ix.doc.Devices {
			d := &b.ix.doc.Devices[i]
			if _, dup := b.deviceClass[d.Name]; !dup && IsName(d.Name) {
				b.deviceClass[d.Name] = d.Class
			}
		}
	}
	c, ok := b.deviceClass[n]
	return c, ok
}

func (b *builder) devices() {
	b.groups = make(map[group]bool)
	for i := range b.ix.doc.Devices {
		d := &b.ix.doc.Devices[i]
		path := fmt.Sprintf("devices[%d]", i)
		ok := true
		if c, found := b.ix.classes[d.Class]; !found {
			b.unknown(path+".class", "device class", d.Class)
			ok = false
		} else if c.SPIRETPM() && !c.OwnAgent() {
			b.errorf(path+".class", "class %q sets attestation.spire, which needs devices that run their own SPIRE agent (identity: agent)", d.Class)
		}
		if _, found := b.ix.gateways[d.Gateway]; !found {
			b.unknown(path+".gateway", "gateway", d.Gateway)
			ok = false
		}
		if len(d.Labels) > 0 {
			b.labels(path, d.Labels)
		}
		if name(b, path, "device", d.Name, b.ix.devices, d) && ok {
			b.ix.devicesByGateway[d.Gateway] = append(b.ix.devicesByGateway[d.Gateway], d)
			b.groups[group{d.Class, d.Gateway}] = true
		}
	}
}

func (b *builder) services() {
	for i := range b.ix.doc.Services {
		s := &b.ix.doc.Services[i]
		path := fmt.Sprintf("services[%d]", i)
		b.labels(path, s.Labels)
		if _, ok := b.ix.zones[s.Zone]; !ok {
			b.unknown(path+".zone", "zone", s.Zone)
		}
		switch s.Protocol {
		case ProtocolHTTP, ProtocolGRPC, ProtocolTCP:
		case "":
			b.errorf(path+".protocol", "is required (http, grpc or tcp)")
		default:
			b.errorf(path+".protocol", "unknown protocol %q (want http, grpc or tcp)", s.Protocol)
		}
		if s.Protocol != ProtocolTCP && len(s.Hosts) == 0 {
			b.errorf(path+".hosts", "an %s service needs at least one host", s.Protocol)
		}
		for j, h := range s.Hosts {
			hp := fmt.Sprintf("%s.hosts[%d]", path, j)
			if !isHost(h) {
				b.errorf(hp, "%q is not a lowercase DNS name", h)
				continue
			}
			if other, dup := b.ix.serviceByHost[h]; dup {
				b.errorf(hp, "host %q already names service %q", h, other.Name)
				continue
			}
			b.ix.serviceByHost[h] = s
		}
		for j, e := range s.Endpoints {
			if err := checkEndpoint(e); err != nil {
				b.errorf(fmt.Sprintf("%s.endpoints[%d]", path, j), "%v", err)
			}
		}
		b.backends(path, s)
		if name(b, path, "service", s.Name, b.ix.services, s) {
			b.ix.servicesByZone[s.Zone] = append(b.ix.servicesByZone[s.Zone], s)
		}
	}
}

// backends checks a service fronted by its zone's cloud edge: the edge
// listens on the endpoints' port, so there must be endpoints, one port for
// all of them, and no other fronted service of the zone on that port.
func (b *builder) backends(path string, s *Service) {
	if len(s.Backends) == 0 {
		return
	}
	if s.Protocol == ProtocolTCP {
		b.errorf(path+".backends", "a tcp service cannot be fronted by a cloud edge (http and grpc only)")
	}
	for j, e := range s.Backends {
		if err := checkEndpoint(e); err != nil {
			b.errorf(fmt.Sprintf("%s.backends[%d]", path, j), "%v", err)
		}
	}
	if len(s.Endpoints) == 0 {
		b.errorf(path+".endpoints", "a service with backends needs endpoints: the cloud edge listens on their port")
		return
	}
	port := ""
	for j, e := range s.Endpoints {
		_, p, err := net.SplitHostPort(e)
		if err != nil {
			return // reported with the endpoint
		}
		if port == "" {
			port = p
		} else if p != port {
			b.errorf(fmt.Sprintf("%s.endpoints[%d]", path, j), "port %s differs from %s: a service with backends is fronted on one port", p, port)
			return
		}
	}
	if b.edgePorts == nil {
		b.edgePorts = map[string]string{}
	}
	k := s.Zone + "/" + port
	if other, dup := b.edgePorts[k]; dup {
		b.errorf(path+".endpoints", "port %s is already fronted by the cloud edge of zone %q for service %q", port, s.Zone, other)
		return
	}
	b.edgePorts[k] = s.Name
}

func (b *builder) flows() {
	b.ix.rules = make([]Rule, len(b.ix.doc.Flows))
	for i := range b.ix.doc.Flows {
		f := &b.ix.doc.Flows[i]
		path := fmt.Sprintf("flows[%d]", i)
		r := &b.ix.rules[i]
		*r = Rule{Flow: f, Position: i}
		b.labels(path, f.Labels)
		b.selector(path+".from", &f.From)
		b.selector(path+".to", &f.To)
		if f.HTTP != nil {
			if svc := f.To.serviceNames(); len(svc) > 0 {
				for _, n := range svc {
					if s, ok := b.ix.services[n]; ok && s.Protocol == ProtocolTCP {
						b.errorf(path+".http", "service %q speaks tcp; http matching needs an http or grpc service", n)
					}
				}
			}
			for j, m := range f.HTTP.Methods {
				if !httpMethods[m] {
					b.errorf(fmt.Sprintf("%s.http.methods[%d]", path, j), "unknown HTTP method %q (methods are upper case)", m)
					continue
				}
				if slices.Contains(r.Methods, m) {
					b.errorf(fmt.Sprintf("%s.http.methods[%d]", path, j), "duplicate method %q", m)
					continue
				}
				r.Methods = append(r.Methods, m)
			}
			for j, p := range f.HTTP.Paths {
				pm, err := parsePath(p)
				if err != nil {
					b.errorf(fmt.Sprintf("%s.http.paths[%d]", path, j), "%v", err)
					continue
				}
				r.Paths = append(r.Paths, pm)
			}
		}
		if f.RateLimit != "" {
			rate, err := ParseRate(f.RateLimit)
			if err != nil {
				b.errorf(path+".rateLimit", "%v", err)
			}
			r.Rate = rate
		}
		name(b, path, "flow", f.Name, b.ix.rulesByName, r)
	}
}

func (s *Selector) serviceNames() []string {
	if s.Service != "" {
		return append([]string{s.Service}, s.Services...)
	}
	return s.Services
}

func (s *Selector) selectsServices() bool { return s.Service != "" || len(s.Services) > 0 }

func (b *builder) selector(path string, s *Selector) {
	if len(s.Zones)+len(s.Classes)+len(s.Devices)+len(s.Gateways)+len(s.Services) == 0 && s.Service == "" {
		b.errorf(path, "selects nothing; give zones, classes, devices, gateways, services or service")
		return
	}
	if s.Service != "" && len(s.Services) > 0 {
		b.errorf(path, "give either service or services, not both")
	}
	if s.selectsServices() && len(s.Classes)+len(s.Devices)+len(s.Gateways) > 0 {
		b.errorf(path, "a selector of services cannot also name classes, devices or gateways")
	}
	refs := func(field, kind string, names []string, exists func(string) bool) {
		for j, n := range names {
			if !exists(n) {
				b.unknown(fmt.Sprintf("%s.%s[%d]", path, field, j), kind, n)
			}
		}
	}
	refs("zones", "zone", s.Zones, exists(b.ix.zones))
	refs("classes", "device class", s.Classes, exists(b.ix.classes))
	refs("devices", "device", s.Devices, exists(b.ix.devices))
	refs("gateways", "gateway", s.Gateways, exists(b.ix.gateways))
	refs("services", "service", s.Services, exists(b.ix.services))
	if s.Service != "" && !exists(b.ix.services)(s.Service) {
		b.unknown(path+".service", "service", s.Service)
	}
}

func exists[T any](m map[string]T) func(string) bool {
	return func(n string) bool {
		_, ok := m[n]
		return ok
	}
}

// indexRules records, for each side of each rule, which subjects it selects.
// Devices are indexed by (class, gateway) group, so a million devices cost
// one entry per group rather than one per device.
func (b *builder) indexRules() {
	ix := b.ix
	ix.sources = make(map[*Rule]*Sources, len(ix.rules))
	groups := make([]group, 0, len(b.groups))
	for g := range b.groups {
		groups = append(groups, g)
	}
	slices.SortFunc(groups, func(x, y group) int {
		return cmp.Or(cmp.Compare(x.gateway, y.gateway), cmp.Compare(x.class, y.class))
	})
	for _, side := range []struct {
		idx *ruleIndex
		sel func(*Rule) *Selector
	}{
		{&ix.from, func(r *Rule) *Selector { return &r.From }},
		{&ix.to, func(r *Rule) *Selector { return &r.To }},
	} {
		*side.idx = ruleIndex{
			groups:   make(map[group][]*Rule),
			devices:  make(map[string][]*Rule),
			services: make(map[string][]*Rule),
		}
		from := side.idx == &ix.from
		for i := range ix.rules {
			r := &ix.rules[i]
			s := side.sel(r)
			src := &Sources{}
			switch {
			case s.selectsServices():
				for _, n := range s.serviceNames() {
					if svc := ix.services[n]; len(s.Zones) == 0 || slices.Contains(s.Zones, svc.Zone) {
						addRule(side.idx.services, n, r)
						src.Services = append(src.Services, n)
					}
				}
			case len(s.Devices) > 0:
				for _, n := range s.Devices {
					if d := ix.devices[n]; ix.selects(s, d) {
						addRule(side.idx.devices, n, r)
						src.Gateways = append(src.Gateways, d.Gateway)
					}
				}
			default:
				for _, g := range groups {
					if ix.selectsGroup(s, g) {
						side.idx.groups[g] = append(side.idx.groups[g], r)
						src.Gateways = append(src.Gateways, g.gateway)
					}
				}
			}
			if from {
				slices.Sort(src.Services)
				src.Services = slices.Compact(src.Services)
				slices.Sort(src.Gateways)
				src.Gateways = slices.Compact(src.Gateways)
				ix.sources[r] = src
			}
		}
	}
	for _, list := range ix.devicesByGateway {
		slices.SortFunc(list, func(x, y *Device) int { return cmp.Compare(x.Name, y.Name) })
	}
	for _, list := range ix.gatewaysByZone {
		slices.SortFunc(list, func(x, y *Gateway) int { return cmp.Compare(x.Name, y.Name) })
	}
	for _, list := range ix.servicesByZone {
		slices.SortFunc(list, func(x, y *Service) int { return cmp.Compare(x.Name, y.Name) })
	}
}

// addRule appends r to m[k] unless it is already there. Rules are added in
// document order, so a repeat is always last: a selector that names the same
// service or device twice must not list the rule twice.
func addRule(m map[string][]*Rule, k string, r *Rule) {
	if l := m[k]; len(l) > 0 && l[len(l)-1] == r {
		return
	}
	m[k] = append(m[k], r)
}

func (ix *Index) selectsGroup(s *Selector, g group) bool {
	gw := ix.gateways[g.gateway]
	return (len(s.Zones) == 0 || slices.Contains(s.Zones, gw.Zone)) &&
		(len(s.Classes) == 0 || slices.Contains(s.Classes, g.class)) &&
		(len(s.Gateways) == 0 || slices.Contains(s.Gateways, g.gateway))
}

func (ix *Index) selects(s *Selector, d *Device) bool {
	return ix.selectsGroup(s, group{d.Class, d.Gateway}) &&
		(len(s.Devices) == 0 || slices.Contains(s.Devices, d.Name))
}
