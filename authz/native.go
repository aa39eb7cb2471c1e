package authz

import (
	"fmt"
	"unicode/utf8"

	"github.com/vigil-iot/vigil/topology"
)

// Vigil's default policy, compiled by hand to Go (decision 0009).
//
// decideDefault gives, for every resolution, exactly the Result that
// policy/vigil.rego gives for the input.vigil Vigil builds from it: the
// same allow, the same reason string, the same status. It reads the
// resolution directly, so a Check of the default policy builds no policy
// input and runs no Rego. The Rego text stays the policy's specification:
// TestNativeMatchesRego decides many generated requests both ways and
// fails on any difference, and `--policy-engine=rego` (Engine.UseRego)
// runs the Rego itself. Custom policies (--policy-dir) always run as Rego.
//
// The clauses below follow the Rego's, in its order; each comment names
// the Rego it stands for.
func decideDefault(res *resolution) Result {
	r := res.req
	var (
		subjectKnown = res.known // input.vigil.subject != null
		quarantined  = res.subjState != nil && res.subjState.Quarantine != nil
		gwQuarantine = res.gwState != nil && res.gwState.Quarantine != nil // gateway_quarantined
		risk         = res.risk()
		restrictAt   = res.response().RestrictAt
		required     = subjectKnown && res.sub.Kind == topology.KindDevice && res.class != nil && res.class.MaxAge > 0
		attestation  = res.subjState != nil && res.subjState.Attestation != nil // subject.attestation != null
		acceptable   = attestation && res.attProblem == ""
		attestOK     = !required || acceptable // attestation_ok
	)
	if subjectKnown && !quarantined && !gwQuarantine && attestOK {
		if risk < restrictAt { // not restricted: the first flow that allows
			if f := firstAllowing(res.flows, r.Method, r.Path, false); f != nil {
				return Result{Allowed: true, Reason: fmt.Sprintf("allowed by flow %q", f.Name)}
			}
		} else if f := firstAllowing(res.flows, r.Method, r.Path, true); f != nil { // restricted: essential flows only
			return Result{Allowed: true, Reason: fmt.Sprintf("allowed by flow %q", f.Name)}
		}
	}
	return Result{Reason: denial(res, quarantined, gwQuarantine, required, attestation, acceptable, risk, restrictAt), HTTPStatus: 403}
}

// denial is the Rego's denial: the first reason, in its order, to refuse.
func denial(res *resolution, quarantined, gwQuarantine, required, attestation, acceptable bool, risk, restrictAt int) string {
	r := res.req
	if !res.known {
		return fmt.Sprintf("unknown identity %q", r.Principal)
	}
	if res.svc == nil {
		return "unknown destination service"
	}
	id, _ := res.snap.Index().SPIFFEID(res.sub)
	switch {
	case quarantined:
		return fmt.Sprintf("%s is quarantined: %s", id, res.subjState.Quarantine.Reason)
	case gwQuarantine:
		return fmt.Sprintf("gateway %s is quarantined", res.gw.Name)
	case required && !attestation:
		return fmt.Sprintf("%s has no attestation; its class requires one", id)
	case required && !acceptable:
		return fmt.Sprintf("attestation of %s is not acceptable: %s", id, res.attProblem)
	case risk >= restrictAt && firstAllowing(res.flows, r.Method, r.Path, false) != nil:
		return fmt.Sprintf("%s is restricted by risk %d (restrictAt %d): only essential flows are allowed", id, risk, restrictAt)
	case len(res.flows) == 0:
		return fmt.Sprintf("no flow allows %s to reach service %s", id, res.svc.Name)
	case firstAllowing(res.flows, r.Method, r.Path, false) == nil:
		return fmt.Sprintf("no flow allows %s %s from %s to service %s", r.Method, r.Path, id, res.svc.Name)
	}
	// No denial applies: the Rego's default decision.
	return "no flow allows this request"
}

// firstAllowing is the first flow, in document order, that allows method
// and path as the Rego's allowing (essentialOnly: essential_allowing)
// matches them: a method of the flow is "*" (any: a flow that names none)
// or the request's; a path of the flow is a prefix of the request's path
// (any: a flow that names none), and the request's path is at most its
// max_length long, counted in characters as Rego's count does (an exact
// path's max_length is its own length in bytes; a prefix has none).
func firstAllowing(flows []*topology.Rule, method, path string, essentialOnly bool) *topology.Rule {
	var pathLen = -1 // counted once, when first needed
	for _, f := range flows {
		if essentialOnly && !f.Essential {
			continue
		}
		if !methodMatches(f.Methods, method) {
			continue
		}
		if len(f.Paths) == 0 {
			return f // {"value": "", "prefix": true}
		}
		for _, p := range f.Paths {
			if len(path) < len(p.Value) || path[:len(p.Value)] != p.Value {
				continue
			}
			if p.Prefix {
				if pathLen < 0 {
					pathLen = utf8.RuneCountInString(path)
				}
				if pathLen <= maxPathLength {
					return f
				}
				continue
			}
			if pathLen < 0 {
				pathLen = utf8.RuneCountInString(path)
			}
			if pathLen <= len(p.Value) {
				return f
			}
		}
	}
	return nil
}

func methodMatches(methods []string, method string) bool {
	if len(methods) == 0 {
		return true // ["*"]
	}
	for _, m := range methods {
		if m == "*" || m == method {
			return true
		}
	}
	return false
}
