package authz

import (
	"fmt"
	"maps"
	"slices"
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
//	                  risk, attestation_required,
//	                  attestation: null | {method, firmware_version,
//	                     verified_at, expires_at, acceptable, problem}}
//	gateway   null | {name, spiffe_id, quarantined}   the gateway it came through
//	service   null | {name, zone, protocol, spiffe_id, labels}
//	flows     [{name, methods, paths: [{value, prefix}], rate_limit}]
//	          the flows from subject to service, in document order
type resolution struct {
	vigil ast.Value
	// deny is set when the identity itself is unacceptable (a forwarded
	// identity that does not check out); the policy is not consulted.
	deny string

	subjectID string // SPIFFE ID decided for, for the log
	gateway   string
	service   string
	device    *topology.Device // for rate limits
	class     *topology.Class
	flows     []*topology.Rule
}

// resolve builds the resolution of r against snap at time now.
func resolve(snap *topology.Snapshot, r *Request, now time.Time) resolution {
	ix := snap.Index()
	var res resolution
	sub, known := ix.BySPIFFEID(r.Principal)
	res.subjectID = r.Principal
	var gw *topology.Gateway
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
		gw, _ = ix.Gateway(sub.Name)
		sub, res.subjectID = dev, r.Forwarded
	} else if known && sub.Kind == topology.KindDevice {
		d, _ := ix.Device(sub.Name)
		gw, _ = ix.Gateway(d.Gateway)
	}

	svc, svcKnown := (*topology.Service)(nil), false
	if r.Service != "" {
		svc, svcKnown = ix.Service(r.Service)
	} else {
		svc, svcKnown = ix.ServiceByHost(r.Host)
	}

	// revision and node are added by stamp, after a cache key could be
	// taken from what the policy decides on.
	obj := ast.NewObject(
		item("request", ast.ObjectTerm(
			item("method", ast.StringTerm(r.Method)),
			item("path", ast.StringTerm(r.Path)),
			item("host", ast.StringTerm(r.Host)),
		)),
	)
	obj.Insert(ast.StringTerm("subject"), nullOr(known, func() *ast.Term { return ast.NewTerm(res.subjectValue(snap, sub, now)) }))
	obj.Insert(ast.StringTerm("gateway"), nullOr(gw != nil, func() *ast.Term {
		res.gateway = gw.Name
		id, _ := ix.SPIFFEID(topology.GatewaySubject(gw.Name))
		return ast.ObjectTerm(
			item("name", ast.StringTerm(gw.Name)),
			item("spiffe_id", ast.StringTerm(id)),
			item("quarantined", ast.BooleanTerm(snap.Quarantined(topology.GatewaySubject(gw.Name)))),
		)
	}))
	obj.Insert(ast.StringTerm("service"), nullOr(svcKnown, func() *ast.Term {
		res.service = svc.Name
		id, _ := ix.SPIFFEID(topology.ServiceSubject(svc.Name))
		return ast.ObjectTerm(
			item("name", ast.StringTerm(svc.Name)),
			item("zone", ast.StringTerm(svc.Zone)),
			item("protocol", ast.StringTerm(svc.Protocol)),
			item("spiffe_id", ast.StringTerm(id)),
			item("labels", labelsTerm(svc.Labels)),
		)
	}))
	if known && svcKnown {
		res.flows = flowsBetween(ix, sub, svc)
	}
	flows := make([]*ast.Term, len(res.flows))
	for i, f := range res.flows {
		flows[i] = flowTerm(f)
	}
	obj.Insert(ast.StringTerm("flows"), ast.ArrayTerm(flows...))
	res.vigil = obj
	return res
}

// stamp adds the revision and the deciding member to input.vigil.
func (res *resolution) stamp(rev topology.Revision, node string) {
	obj := res.vigil.(ast.Object)
	obj.Insert(ast.StringTerm("revision"), ast.UIntNumberTerm(uint64(rev)))
	obj.Insert(ast.StringTerm("node"), ast.StringTerm(node))
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

func (res *resolution) subjectValue(snap *topology.Snapshot, sub topology.Subject, now time.Time) ast.Value {
	ix := snap.Index()
	zone, _ := ix.ZoneOf(sub)
	id, _ := ix.SPIFFEID(sub)
	st := snap.SubjectState(sub)
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
		d, _ := ix.Device(sub.Name)
		c, _ := ix.Class(d.Class)
		res.device, res.class = d, c
		labels, required = d.Labels, c.MaxAge > 0
		obj.Insert(ast.StringTerm("class"), ast.StringTerm(d.Class))
		obj.Insert(ast.StringTerm("gateway"), ast.StringTerm(d.Gateway))
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
	risk := 0
	if st != nil && st.Risk != nil {
		risk = st.Risk.Score
	}
	obj.Insert(ast.StringTerm("risk"), ast.IntNumberTerm(risk))
	obj.Insert(ast.StringTerm("attestation_required"), ast.BooleanTerm(required))
	var att *topology.Attestation
	if st != nil {
		att = st.Attestation
	}
	obj.Insert(ast.StringTerm("attestation"), nullOr(att != nil, func() *ast.Term {
		problem := attestationProblem(att, res.class, now)
		return ast.ObjectTerm(
			item("method", ast.StringTerm(att.Method)),
			item("firmware_version", ast.StringTerm(att.FirmwareVersion)),
			item("verified_at", ast.StringTerm(att.VerifiedAt.UTC().Format(time.RFC3339Nano))),
			item("expires_at", ast.StringTerm(att.ExpiresAt.UTC().Format(time.RFC3339Nano))),
			item("acceptable", ast.BooleanTerm(problem == "")),
			item("problem", ast.StringTerm(problem)),
		)
	}))
	return obj
}

// attestationProblem says why an attestation is not acceptable now, or "".
func attestationProblem(a *topology.Attestation, c *topology.Class, now time.Time) string {
	if !now.Before(a.ExpiresAt) {
		return fmt.Sprintf("it expired at %s", a.ExpiresAt.UTC().Format(time.RFC3339))
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

func flowTerm(f *topology.Rule) *ast.Term {
	methods := make([]*ast.Term, len(f.Methods))
	for i, m := range f.Methods {
		methods[i] = ast.StringTerm(m)
	}
	paths := make([]*ast.Term, len(f.Paths))
	for i, p := range f.Paths {
		paths[i] = ast.ObjectTerm(item("value", ast.StringTerm(p.Value)), item("prefix", ast.BooleanTerm(p.Prefix)))
	}
	return ast.ObjectTerm(
		item("name", ast.StringTerm(f.Name)),
		item("methods", ast.ArrayTerm(methods...)),
		item("paths", ast.ArrayTerm(paths...)),
		item("rate_limit", ast.StringTerm(f.RateLimit)),
	)
}

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
