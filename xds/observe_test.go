package xds

import (
	"sync"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
)

// observed records what Config.OnPush and Config.OnAnswer report.
type observed struct {
	mu      sync.Mutex
	pushes  map[string]int
	answers []answer
}

func (o *observed) config(c *Config) {
	o.pushes = map[string]int{}
	c.OnPush = func(typeURL string) {
		o.mu.Lock()
		defer o.mu.Unlock()
		o.pushes[typeURL]++
	}
	c.OnAnswer = func(typeURL string, latency time.Duration, nack bool) {
		o.mu.Lock()
		defer o.mu.Unlock()
		o.answers = append(o.answers, answer{typeURL: typeURL, latency: latency, nack: nack})
	}
}

func (o *observed) get() (map[string]int, []answer) {
	o.mu.Lock()
	defer o.mu.Unlock()
	pushes := map[string]int{}
	for k, v := range o.pushes {
		pushes[k] = v
	}
	return pushes, append([]answer(nil), o.answers...)
}

// TestServerReportsPushesAndAnswers: every response is a push; the first
// ACK or NACK of it is an answer, reported once, with its latency; a later
// request repeating the nonce is none.
func TestServerReportsPushesAndAnswers(t *testing.T) {
	var o observed
	f := startWith(t, smartCitySnapshot(t, 3), o.config)
	c := connected(t, f) // every type pushed once and ACKed once
	eventually(t, "four pushes and four ACKs reported", func() bool {
		pushes, answers := o.get()
		return len(pushes) == 4 && len(answers) == 4
	})
	pushes, answers := o.get()
	for _, typ := range allTypes {
		if pushes[typ] != 1 {
			t.Errorf("%s pushed %d times, want 1", typ, pushes[typ])
		}
	}
	seen := map[string]bool{}
	for _, a := range answers {
		if a.nack || a.latency < 0 || seen[a.typeURL] {
			t.Errorf("answer %+v (seen before: %v)", a, seen[a.typeURL])
		}
		seen[a.typeURL] = true
	}

	// Asking again with the ACKed nonce (names changed) is no new answer.
	d := f.ads(t, "gw-south-1")
	d.ask(resourcev3.ListenerType)
	r := d.next()
	d.ack(r)
	d.send(&discoverygrpc.DiscoveryRequest{TypeUrl: resourcev3.ListenerType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: []string{"x"}})
	d.send(&discoverygrpc.DiscoveryRequest{TypeUrl: resourcev3.ClusterType})
	d.next() // the clusters: the requests before were handled in order
	_, answers = o.get()
	if len(answers) != 5 {
		t.Errorf("%d answers after one more ACK and a repeated nonce, want 5: %+v", len(answers), answers)
	}
	c.silent()

	// A NACK is an answer too.
	e := f.ads(t, "gw-east-1")
	e.ask(resourcev3.RouteType)
	r = e.next()
	e.send(&discoverygrpc.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResponseNonce: r.GetNonce(),
		ErrorDetail: &status.Status{Code: 3, Message: "bad route"}})
	eventually(t, "the NACK reported", func() bool {
		_, answers := o.get()
		return len(answers) == 6 && answers[5].nack && answers[5].typeURL == resourcev3.RouteType
	})
}
