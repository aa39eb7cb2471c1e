package topology

import (
	"fmt"
	"strings"
)

// Kind is the kind of a subject that holds an identity.
type Kind uint8

// Subject kinds.
const (
	KindDevice Kind = iota + 1
	KindGateway
	KindService
)

func (k Kind) String() string {
	switch k {
	case KindDevice:
		return "device"
	case KindGateway:
		return "gateway"
	case KindService:
		return "service"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ParseKind reads "device", "gateway" or "service".
func ParseKind(s string) (Kind, error) {
	switch s {
	case "device":
		return KindDevice, nil
	case "gateway":
		return KindGateway, nil
	case "service":
		return KindService, nil
	}
	return 0, fmt.Errorf("unknown subject kind %q (want device, gateway or service)", s)
}

// MarshalText writes the kind's name; a kind that is none of the three
// cannot be written, so it can never reach a replicated log.
func (k Kind) MarshalText() ([]byte, error) {
	if k < KindDevice || k > KindService {
		return nil, fmt.Errorf("invalid subject kind %d", uint8(k))
	}
	return []byte(k.String()), nil
}

// UnmarshalText reads a kind's name.
func (k *Kind) UnmarshalText(b []byte) error {
	v, err := ParseKind(string(b))
	*k = v
	return err
}

// Subject names a device, gateway or service.
type Subject struct {
	Kind Kind   `json:"kind"`
	Name string `json:"name"`
}

func (s Subject) String() string { return s.Kind.String() + "/" + s.Name }

// Device, Gateway and Service build subjects.
func DeviceSubject(name string) Subject  { return Subject{KindDevice, name} }
func GatewaySubject(name string) Subject { return Subject{KindGateway, name} }
func ServiceSubject(name string) Subject { return Subject{KindService, name} }

// SPIFFEID is the identity of a subject in a zone of a trust domain:
// spiffe://<trustDomain>/zone/<zone>/<kind>/<name>.
func SPIFFEID(trustDomain, zone string, s Subject) string {
	return "spiffe://" + trustDomain + "/zone/" + zone + "/" + s.Kind.String() + "/" + s.Name
}

// NodeSPIFFEID is the identity of a Vigil control-plane node.
func NodeSPIFFEID(trustDomain, nodeID string) string {
	return "spiffe://" + trustDomain + "/vigil/node/" + nodeID
}

// OperatorSPIFFEID is the identity of a human or automated operator.
func OperatorSPIFFEID(trustDomain, name string) string {
	return "spiffe://" + trustDomain + "/operator/" + name
}

// parseSubjectID splits spiffe://<td>/zone/<zone>/<kind>/<name>.
func parseSubjectID(trustDomain, id string) (zone string, s Subject, ok bool) {
	zone, kindName, name, ok := ParseZonedID(trustDomain, id)
	if !ok {
		return "", Subject{}, false
	}
	kind, err := ParseKind(kindName)
	if err != nil {
		return "", Subject{}, false
	}
	return zone, Subject{kind, name}, true
}

// ParseZonedID splits an identity of trustDomain of the shape
// spiffe://<trustDomain>/zone/<zone>/<kind>/<name> (subjects', and other
// zoned identities such as cloud edges'); the parts are not checked.
func ParseZonedID(trustDomain, id string) (zone, kind, name string, ok bool) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", "", "", false
	}
	td, rest, ok := strings.Cut(rest, "/")
	if !ok || td != trustDomain {
		return "", "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 || parts[0] != "zone" {
		return "", "", "", false
	}
	return parts[1], parts[2], parts[3], true
}
