package node

import (
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/console"
	"github.com/vigil-iot/vigil/topology"
)

// The console part: the hub the authorizer's Observer feeds while a live
// decision stream is open (with none, the Observer checks one atomic and
// builds nothing), and one-time login links for `vigil dev`.

type consolePart struct{ hub *console.Hub }

func (c consolePart) Subscribe(f console.Filter, buf int) (*console.Subscription, error) {
	return c.hub.Subscribe(f, buf)
}

func (n *Node) consoleParts() api.Console { return consolePart{hub: n.hub} }

// consoleDecision is what the console shows of a decision. It runs on the
// Check's goroutine, only while a stream is open; it copies strings only.
func consoleDecision(o *authz.Observation, member string) *console.Decision {
	d := &console.Decision{At: o.At, ID: o.DecisionID, Member: member, Subject: o.Subject.Name, Zone: o.SubjectZone,
		Gateway: o.Gateway, Service: o.Service, Method: o.Method, Path: o.Path, Allowed: o.Allowed,
		Reason: o.Reason, Flow: o.Flow}
	switch o.Subject.Kind {
	case topology.KindDevice, topology.KindGateway, topology.KindService:
		d.Kind = o.Subject.Kind.String()
	default:
		d.Subject = o.Principal
	}
	if d.Service == "" {
		d.Service = o.Host
	}
	if !o.Allowed {
		d.Cause = o.Cause.String()
	}
	return d
}

// LoginLink makes a one-time console login link for the holder of token,
// as `vigil console link` does through the API: open the member's
// /ui/#code=CODE before it expires.
func (n *Node) LoginLink(token string) (code string, expires time.Time, err error) {
	return n.api.LoginLink(token, "operator")
}
