package xds

import (
	"bytes"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
)

// TestShapesSpliceWhatMarshallingGives: a gateway's listener and clusters
// are spliced from their shapes, byte for byte what marshalling the
// gateway's own resource gives, for names short and long (the lengths
// around the name then take more bytes); resources that do not name the
// gateway are one shared encoding.
func TestShapesSpliceWhatMarshallingGives(t *testing.T) {
	cases := []struct {
		in      part
		opts    Options
		spliced bool
	}{
		{listenerIn{trustDomain: "city.example", zone: "north"}, Options{}, true},
		{clusterIn{trustDomain: "city.example", service: "telemetry", peer: "spiffe://city.example/zone/cloud/service/telemetry",
			sni: "telemetry.city.example", protocol: "http", endpoints: "10.0.0.1:443\n10.0.0.2:443"}, Options{}, true},
		{clusterIn{trustDomain: "city.example", service: "lighting", peer: "spiffe://city.example/zone/cloud/service/lighting",
			protocol: "grpc", endpoints: "lighting.internal:443"}, Options{}, true},
		{authzIn{trustDomain: "city.example"}, Options{AuthzTLS: true}, true},
		{authzIn{trustDomain: "city.example"}, Options{}, false},
		{endpointsIn{service: "telemetry", endpoints: "10.0.0.1:443"}, Options{}, false},
	}
	selves := []string{
		"spiffe://city.example/zone/north/gateway/gw-north-1",
		"x",
		"spiffe://city.example/zone/north/gateway/" + strings.Repeat("g", 300),
		"spiffe://city.example/zone/north/gateway/" + strings.Repeat("h", 20000),
	}
	for _, c := range cases {
		opts := c.opts.withDefaults()
		s := newShapes(opts)
		for _, self := range selves {
			p := c.in.withSelfID(self) // endpointsIn names no gateway: itself
			got, err := s.encode(p)
			if err != nil {
				t.Fatal(err)
			}
			m := p.build(opts)
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.bytes(), want) || got.name != name(m) {
				t.Errorf("%T with self of %d bytes: the spliced encoding differs from the marshalled one", c.in, len(self))
			}
			if d, _ := digestOf(m); d != got.digest {
				t.Errorf("%T with self of %d bytes: digest differs", c.in, len(self))
			}
		}
		sh := s.m[c.in.withSelfID("")]
		if spliced := sh.levels != nil; spliced != c.spliced || sh.broken || !c.spliced && sh.fixed == nil {
			t.Errorf("%T %+v: spliced %v broken %v fixed %v, want spliced %v", c.in, c.opts, spliced, sh.broken, sh.fixed != nil, c.spliced)
		}
	}
}

// TestOpenFieldRefuses names that are not exactly one whole field: a
// name that appears twice, or only inside a longer string.
func TestOpenFieldRefuses(t *testing.T) {
	enc := func(m proto.Message) []byte {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	twice := &tlsv3.CommonTlsContext{TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: sentinelA}, {Name: sentinelA}}}
	if _, ok := openField(enc(twice), sentinelA); ok {
		t.Error("a name appearing twice was taken as one open field")
	}
	inside := &tlsv3.SdsSecretConfig{Name: "prefix/" + sentinelA}
	if _, ok := openField(enc(inside), sentinelA); ok {
		t.Error("a name inside a longer string was taken as an open field")
	}
	once := &tlsv3.CommonTlsContext{AlpnProtocols: []string{"h2"}, TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: sentinelA,
		SdsConfig: &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3}}}}
	levels, ok := openField(enc(once), sentinelA)
	if !ok || len(levels) != 2 {
		t.Fatalf("open field of a nested name: %v, %d levels, want 2", ok, len(levels))
	}
}

// TestSDSSecretNameRule pins what makes a spliced instance as valid as
// its shape: an SdsSecretConfig's name must only be non-empty.
func TestSDSSecretNameRule(t *testing.T) {
	for _, n := range []string{"x", "spiffe://city.example/zone/north/gateway/gw-north-1", strings.Repeat("é", 5000)} {
		if err := sdsSecret(n).Validate(); err != nil {
			t.Errorf("SdsSecretConfig named %.20q: %v", n, err)
		}
	}
	if sdsSecret("").Validate() == nil {
		t.Error("an SdsSecretConfig without a name validates")
	}
}
