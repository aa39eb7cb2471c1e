package authz

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/vigil-iot/vigil/topology"
)

// resolution is what Vigil knows about one request at one revision. Its
// vigil value is input.vigil:
//
//	revision  number   the topology revision decided at
//	node      string   the Vigil member deciding
//	request   {method, path, host}
//	subject   null | {kind, name, spiffe_id, zone, class, gateway, labels,
//	                  quarantined, quarantine: {reason, by, since},
//	                  risk, restrict_at, attestation_required,
//	                  attestation: null | {method, firmware_version,
//	                     verified_at, expires_at, acceptable, problem}}
//	          risk is the subject's score (0-100, 0 when none);
//	          restrict_at its class's response.restrictAt (the default,
//	          50, for gateways and services): at risk >= restrict_at only
//	          essential flows may allow
//	gateway   null | {name, spiffe_id, quarantined}   the gateway it came through
//	service   null | {name, zone, protocol, spiffe_id, labels}
//	flows     [{name, methods, paths: [{value, prefix, max_length}],
//	           rate_limit, essential}]
//	          the flows from subject to service, in document order;
//	          methods is ["*"] for any method, paths is [{value: "",
//	          prefix: true}] for any path, and an exact path has
//	          max_length = its own length (see flowTerm); essential is
//	          the flow's essential flag
type resolution struct {
	// deny is set when the identity itself is unacceptable (a forwarded
	// identity that does not check out); the policy is not consulted.
	deny string

	snap      *topology.Snapshot
	req       *Request
	subjectID string // SPIFFE ID decided for, for the log
	sub       topology.Subject
	known     bool
	gw        *topology.Gateway
	svc       *topology.Service
	device    *topology.Device // for rate limits
	class     *topology.Class
	flows     []*topology.Rule
	// The runtime state the policy sees; values are immutable, so their
	// identity stands for their content in the decision cache's key.
	subjState, gwState *topology.SubjectState
	attProblem         string
}

// resolve finds, in Go and without building any policy input, everything
// the decision depends on.
func resolve(snap *topology.Snapshot, r *Request, now time.Time) resolution {
	ix := snap.Index()
	res := resolution{snap: snap, req: r, subjectID: r.Principal}
	sub, known := ix.BySPIFFEID(r.Principal)
	if r.Forwarded != "" {
		if !known || sub.Kind != topology.KindGateway {
			res.deny = fmt.Sprintf("%s may not forward a device identity: only a gateway of this topology may", r.Principal)
			return res
		}
		dev, ok := ix.BySPIFFEID(r.Forwarded)
		if !ok || dev.Kind != topology.KindDevice {
			res.deny = fmt.Sprintf("forwarded identity %s is not a device of this topology", r.Forwarded)
			return res
		}
		d, _ := ix.Device(dev.Name)
		if d.Gateway != sub.Name {
			res.deny = fmt.Sprintf("device %s is not behind gateway %s", dev.Name, sub.Name)
			return res
		}
		res.gw, _ = ix.Gateway(sub.Name)
		sub, res.subjectID = dev, r.Forwarded
	} else if known && sub.Kind == topology.KindDevice {
		d, _ := ix.Device(sub.Name)
		res.gw, _ = ix.Gateway(d.Gateway)
	}
	res.sub, res.known = sub, known
	if r.Service != "" {
		res.svc, _ = ix.Service(r.Service)
	} else {
		res.svc, _ = ix.ServiceByHost(r.Host)
	}
	if res.gw != nil {
		res.gwState = snap.SubjectState(topology.GatewaySubject(res.gw.Name))
	}
	if !known {
		return res
	}
	res.subjState = snap.SubjectState(sub)
	if sub.Kind == topology.KindDevice {
		res.device, _ = ix.Device(sub.Name)
		res.class, _ = ix.Class(res.device.Class)
	}
	if res.subjState != nil && res.subjState.Attestation != nil {
		res.attProblem = attestationProblem(res.subjState.Attestation, res.class, now)
	}
	if res.svc != nil {
		res.flows = flowsBetween(ix, sub, res.svc)
	}
	return res
}

// cacheKey is everything Vigil's default policy reads, by identity.
type cacheKey struct {
	policy                *Policy
	index                 *topology.Index
	principal, forwarded  string
	service, method, path string
	host                  string
	subjState, gwState    *topology.SubjectState
	attProblem            string
}

func (res *resolution) key(p *Policy) cacheKey {
	k := cacheKey{policy: p, index: res.snap.Index(), principal: res.req.Principal, forwarded: res.req.Forwarded,
		method: res.req.Method, path: res.req.Path, host: res.req.Host,
		subjState: res.subjState, gwState: res.gwState, attProblem: res.attProblem}
	if res.svc != nil {
		k.service = res.svc.Name
	}
	return k
}

// risk is the subject's risk score, 0 when it has none.
func (res *resolution) risk() int {
	if res.subjState == nil || res.subjState.Risk == nil {
		return 0
	}
	return res.subjState.Risk.Score
}

// response is the response policy of the subject: its class's, or the
// defaults for a subject without a class.
func (res *resolution) response() topology.ClassResponse {
	if res.class != nil {
		return res.class.Response
	}
	return topology.DefaultResponse()
}

// restricted reports whether the subject's risk restricts it to its
// essential flows.
func (res *resolution) restricted() bool {
	return res.known && res.response().Restricts(res.risk())
}

// allowingFlow is the flow that allows the request as Vigil's default
// policy picks it: the first that matches it, or while the subject is
// restricted the first essential one (the first that matches when none
// is, for a custom policy's allow). Nil when none matches.
func (res *resolution) allowingFlow() *topology.Rule {
	var first *topology.Rule
	restricted := false
	for _, f := range res.flows {
		if !f.AllowsRequest(res.req.Method, res.req.Path) {
			continue
		}
		if first == nil {
			first, restricted = f, res.restricted()
		}
		if !restricted || f.Essential {
			return f
		}
	}
	return first
}

// denyCause is why a policy denied res, derived from what Vigil's default
// policy reads and in the order it looks (policy/vigil.rego): CauseOther
// when nothing explains it, as for a custom policy's own reasons.
func (res *resolution) denyCause() Cause {
	switch {
	case !res.known:
		return CauseUnknownIdentity
	case res.svc == nil:
		return CauseUnknownService
	case res.subjState != nil && res.subjState.Quarantine != nil,
		res.gwState != nil && res.gwState.Quarantine != nil:
		return CauseQuarantined
	case res.class != nil && res.class.MaxAge > 0 &&
		(res.subjState == nil || res.subjState.Attestation == nil || res.attProblem != ""):
		return CauseAttestation
	}
	f := res.allowingFlow()
	switch {
	case f == nil:
		return CauseNoFlow
	case !f.Essential && res.restricted():
		return CauseRestricted
	}
	return CauseOther
}

func (res *resolution) gatewayName() string {
	if res.gw == nil {
		return ""
	}
	return res.gw.Name
}

func (res *resolution) serviceName() string {
	if res.svc == nil {
		return ""
	}
	return res.svc.Name
}

// input builds input.vigil:
//
//	revision  number   the topology revision decided at
//	node      string   the Vigil member deciding
//	request   {method, path, host}
//	subject   null | {kind, name, spiffe_id, zone, class, gateway, labels,
//	                  quarantined, quarantine: {reason, by, since},
//	                  risk, restrict_at, attestation_required,
//	                  attestation: null | {method, firmware_version,
//	                     verified_at, expires_at, acceptable, problem}}
//	          risk is the subject's score (0-100, 0 when none);
//	          restrict_at its class's response.restrictAt (the default,
//	          50, for gateways and services): at risk >= restrict_at only
//	          essential flows may allow
//	gateway   null | {name, spiffe_id, quarantined}   the gateway it came through
//	service   null | {name, zone, protocol, spiffe_id, labels}
//	flows     [{name, methods, paths: [{value, prefix, max_length}],
//	           rate_limit, essential}]
//	          the flows from subject to service, in document order;
//	          methods is ["*"] for any method, paths is [{value: "",
//	          prefix: true}] for any path, and an exact path has
//	          max_length = its own length (see flowTerm); essential is
//	          the flow's essential flag
func (res *resolution) input(node string) ast.Value {
	ix, r := res.snap.Index(), res.req
	obj := ast.NewObject(
		item("revision", ast.UIntNumberTerm(uint64(res.snap.Revision()))),
		item("node", ast.StringTerm(node)),
		item("request", ast.ObjectTerm(
			item("method", ast.StringTerm(r.Method)),
			item("path", ast.StringTerm(r.Path)),
			item("host", ast.StringTerm(r.Host)),
		)),
	)
	obj.Insert(ast.StringTerm("subject"), nullOr(res.known, func() *ast.Term { return ast.NewTerm(res.subjectValue()) }))
	obj.Insert(ast.StringTerm("gateway"), nullOr(res.gw != nil, func() *ast.Term {
		id, _ := ix.SPIFFEID(topology.GatewaySubject(res.gw.Name))
		return ast.ObjectTerm(
			item("name", ast.StringTerm(res.gw.Name)),
			item("spiffe_id", ast.StringTerm(id)),
			item("quarantined", ast.BooleanTerm(res.gwState != nil && res.gwState.Quarantine != nil)),
		)
	}))
	obj.Insert(ast.StringTerm("service"), nullOr(res.svc != nil, func() *ast.Term {
		id, _ := ix.SPIFFEID(topology.ServiceSubject(res.svc.Name))
		return ast.ObjectTerm(
			item("name", ast.StringTerm(res.svc.Name)),
			item("zone", ast.StringTerm(res.svc.Zone)),
			item("protocol", ast.StringTerm(res.svc.Protocol)),
			item("spiffe_id", ast.StringTerm(id)),
			item("labels", labelsTerm(res.svc.Labels)),
		)
	}))
	flows := make([]*ast.Term, len(res.flows))
	for i, f := range res.flows {
		flows[i] = flowTerm(f)
	}
	obj.Insert(ast.StringTerm("flows"), ast.ArrayTerm(flows...))
	return obj
}

// flowsBetween lists, in document order, the flows from sub to svc.
func flowsBetween(ix *topology.Index, sub topology.Subject, svc *topology.Service) []*topology.Rule {
	from, to := ix.RulesFrom(sub), ix.RulesTo(topology.ServiceSubject(svc.Name))
	var out []*topology.Rule
	for _, f := range from {
		if slices.Contains(to, f) {
			out = append(out, f)
		}
	}
	return out
}

func (res *resolution) subjectValue() ast.Value {
	ix, sub, st := res.snap.Index(), res.sub, res.subjState
	zone, _ := ix.ZoneOf(sub)
	id, _ := ix.SPIFFEID(sub)
	obj := ast.NewObject(
		item("kind", ast.StringTerm(sub.Kind.String())),
		item("name", ast.StringTerm(sub.Name)),
		item("spiffe_id", ast.StringTerm(id)),
		item("zone", ast.StringTerm(zone)),
	)
	var labels topology.Labels
	required := false
	switch sub.Kind {
	case topology.KindDevice:
		labels, required = res.device.Labels, res.class.MaxAge > 0
		obj.Insert(ast.StringTerm("class"), ast.StringTerm(res.device.Class))
		obj.Insert(ast.StringTerm("gateway"), ast.StringTerm(res.device.Gateway))
	case topology.KindGateway:
		g, _ := ix.Gateway(sub.Name)
		labels = g.Labels
	case topology.KindService:
		s, _ := ix.Service(sub.Name)
		labels = s.Labels
	}
	obj.Insert(ast.StringTerm("labels"), labelsTerm(labels))
	quarantined := st != nil && st.Quarantine != nil
	obj.Insert(ast.StringTerm("quarantined"), ast.BooleanTerm(quarantined))
	if quarantined {
		obj.Insert(ast.StringTerm("quarantine"), ast.ObjectTerm(
			item("reason", ast.StringTerm(st.Quarantine.Reason)),
			item("by", ast.StringTerm(st.Quarantine.By)),
			item("since", ast.StringTerm(st.Quarantine.Since.UTC().Format(time.RFC3339Nano))),
		))
	}
	obj.Insert(ast.StringTerm("risk"), ast.IntNumberTerm(res.risk()))
	obj.Insert(ast.StringTerm("restrict_at"), ast.IntNumberTerm(res.response().RestrictAt))
	obj.Insert(ast.StringTerm("attestation_required"), ast.BooleanTerm(required))
	var att *topology.Attestation
	if st != nil {
		att = st.Attestation
	}
	obj.Insert(ast.StringTerm("attestation"), nullOr(att != nil, func() *ast.Term {
		return ast.ObjectTerm(
			item("method", ast.StringTerm(att.Method)),
			item("firmware_version", ast.StringTerm(att.FirmwareVersion)),
			item("verified_at", ast.StringTerm(att.VerifiedAt.UTC().Format(time.RFC3339Nano))),
			item("expires_at", ast.StringTerm(att.ExpiresAt.UTC().Format(time.RFC3339Nano))),
			item("acceptable", ast.BooleanTerm(res.attProblem == "")),
			item("problem", ast.StringTerm(res.attProblem)),
		)
	}))
	return obj
}

// MaxClockSkew is how far ahead of a member's clock the verification time
// of an attestation may be: further, the verifying member's clock is ahead
// (or this one's behind) and the attestation is not acceptable here.
const MaxClockSkew = time.Minute

// attestationProblem says why an attestation is not acceptable now, or "".
func attestationProblem(a *topology.Attestation, c *topology.Class, now time.Time) string {
	if a.Failed() {
		why := "no reason recorded"
		if len(a.Reasons) > 0 {
			why = strings.Join(a.Reasons, "; ")
		}
		return fmt.Sprintf("its last %s evidence failed verification: %s", a.Method, why)
	}
	if !now.Before(a.ExpiresAt) {
		return fmt.Sprintf("it expired at %s", a.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if ahead := a.VerifiedAt.Sub(now); ahead > MaxClockSkew {
		// Verified by a member whose clock is ahead of this one's: its
		// age cannot be told here, and counted from its own times it
		// would outlive maxAge by the skew. Denied until this member's
		// clock reaches it (or the device attests again).
		return fmt.Sprintf("it was verified at %s by %s, %s ahead of this member's clock: the members' clocks disagree",
			a.VerifiedAt.UTC().Format(time.RFC3339), a.Verifier, ahead.Round(time.Second))
	}
	if c == nil || c.MaxAge == 0 {
		return ""
	}
	if age := now.Sub(a.VerifiedAt); age > c.MaxAge {
		return fmt.Sprintf("it is %s old; class %s allows %s", age.Round(time.Second), c.Name, c.MaxAge)
	}
	for _, fw := range c.Attestation.Firmware {
		if fw.Version == a.FirmwareVersion && (a.FirmwareSHA256 == "" || fw.SHA256 == a.FirmwareSHA256) {
			return ""
		}
	}
	return fmt.Sprintf("firmware %s is not a reference value of class %s", a.FirmwareVersion, c.Name)
}

// flowTerm gives a flow in the shape the default policy matches cheaply:
// methods, "*" for any; paths as {value, prefix, max_length}, where an
// exact path is a prefix no longer than itself and any path is "".
func flowTerm(f *topology.Rule) *ast.Term {
	methods := []*ast.Term{ast.StringTerm("*")}
	if len(f.Methods) > 0 {
		methods = make([]*ast.Term, len(f.Methods))
		for i, m := range f.Methods {
			methods[i] = ast.StringTerm(m)
		}
	}
	path := func(value string, prefix bool) *ast.Term {
		limit := len(value)
		if prefix {
			limit = maxPathLength
		}
		return ast.ObjectTerm(item("value", ast.StringTerm(value)), item("prefix", ast.BooleanTerm(prefix)),
			item("max_length", ast.IntNumberTerm(limit)))
	}
	paths := []*ast.Term{path("", true)}
	if len(f.Paths) > 0 {
		paths = make([]*ast.Term, len(f.Paths))
		for i, p := range f.Paths {
			paths[i] = path(p.Value, p.Prefix)
		}
	}
	return ast.ObjectTerm(
		item("name", ast.StringTerm(f.Name)),
		item("methods", ast.ArrayTerm(methods...)),
		item("paths", ast.ArrayTerm(paths...)),
		item("rate_limit", ast.StringTerm(f.RateLimit)),
		item("essential", ast.BooleanTerm(f.Essential)),
	)
}

// maxPathLength stands for "no limit" in a prefix path's max_length.
const maxPathLength = 1 << 30

func labelsTerm(l topology.Labels) *ast.Term {
	obj := ast.NewObject()
	for _, k := range slices.Sorted(maps.Keys(l)) {
		obj.Insert(ast.StringTerm(k), ast.StringTerm(l[k]))
	}
	return ast.NewTerm(obj)
}

func item(k string, v *ast.Term) [2]*ast.Term { return ast.Item(ast.StringTerm(k), v) }

func nullOr(ok bool, f func() *ast.Term) *ast.Term {
	if !ok {
		return ast.NullTerm()
	}
	return f()
}
