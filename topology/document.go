package topology

// APIVersion is the only document version this package understands.
const APIVersion = "vigil/v1"

// Document is the operator-written zone topology, exactly as it appears in a
// vigil/v1 YAML or JSON file. It is plain data: use Decode to read one and
// NewIndex to validate and index it.
type Document struct {
	APIVersion    string        `yaml:"apiVersion" json:"apiVersion"`
	TrustDomain   string        `yaml:"trustDomain" json:"trustDomain"`
	Zones         []Zone        `yaml:"zones,omitempty" json:"zones,omitempty"`
	Gateways      []Gateway     `yaml:"gateways,omitempty" json:"gateways,omitempty"`
	DeviceClasses []DeviceClass `yaml:"deviceClasses,omitempty" json:"deviceClasses,omitempty"`
	Devices       []Device      `yaml:"devices,omitempty" json:"devices,omitempty"`
	Services      []Service     `yaml:"services,omitempty" json:"services,omitempty"`
	Flows         []Flow        `yaml:"flows,omitempty" json:"flows,omitempty"`
}

// Labels are free-form key/value annotations on any named object.
type Labels map[string]string

// Zone is a network segment: a city district, a building, or the cloud.
type Zone struct {
	Name   string `yaml:"name" json:"name"`
	Labels Labels `yaml:"labels,omitempty" json:"labels,omitempty"`
}

// Gateway is the edge proxy that fronts the devices of one zone.
type Gateway struct {
	Name string `yaml:"name" json:"name"`
	Zone string `yaml:"zone" json:"zone"`
	// Class, optional, names a device class whose attestation policy the
	// gateway's TPM evidence is judged by (reference values, PCRs,
	// maxAge, spire). Only the class's attestation applies to a gateway.
	Class  string `yaml:"class,omitempty" json:"class,omitempty"`
	Labels Labels `yaml:"labels,omitempty" json:"labels,omitempty"`
}

// DeviceClass holds what all devices of one kind share: how they get their
// identity, how fresh their firmware attestation must be, which firmware is
// acceptable, what the monitor may do about them, and their default request
// rate.
type DeviceClass struct {
	Name string `yaml:"name" json:"name"`
	// Identity says how the class's devices get their SPIFFE identity:
	// IdentityDelegated (the default, also when empty) or IdentityAgent.
	Identity    string             `yaml:"identity,omitempty" json:"identity,omitempty"`
	Attestation *AttestationPolicy `yaml:"attestation,omitempty" json:"attestation,omitempty"`
	// Response is what the monitor may do about a risky device of the
	// class; nil means the defaults (see ResponsePolicy).
	Response  *ResponsePolicy `yaml:"response,omitempty" json:"response,omitempty"`
	RateLimit string          `yaml:"rateLimit,omitempty" json:"rateLimit,omitempty"`
	Labels    Labels          `yaml:"labels,omitempty" json:"labels,omitempty"`
}

// ResponsePolicy says how the monitor answers a device's risk (0-100).
// Every field is optional; Class.Response holds the values in force, with
// the defaults filled in.
type ResponsePolicy struct {
	// RestrictAt is the risk from which only the flows marked essential
	// stay allowed (1 to 100, default DefaultRestrictAt). A pointer, so
	// that a value given as 0 is reported rather than taken as unset.
	RestrictAt *int `yaml:"restrictAt,omitempty" json:"restrictAt,omitempty"`
	// QuarantineAt is the risk from which the playbook runs (RestrictAt to
	// 100, default DefaultQuarantineAt).
	QuarantineAt *int `yaml:"quarantineAt,omitempty" json:"quarantineAt,omitempty"`
	// Mode is ResponseAuto (the default, also when empty) or
	// ResponseApprove (an operator approves each quarantine).
	Mode string `yaml:"mode,omitempty" json:"mode,omitempty"`
	// Learning is how long after the class first appears findings only
	// alert and never act: a duration such as "0s" (the default), "1h" or
	// "7d".
	Learning string `yaml:"learning,omitempty" json:"learning,omitempty"`
	// NeverQuarantine names devices of this class that the automatic
	// playbook never quarantines (an operator still can).
	NeverQuarantine []string `yaml:"neverQuarantine,omitempty" json:"neverQuarantine,omitempty"`
}

// Response modes (ResponsePolicy.Mode).
const (
	// ResponseAuto: the playbook quarantines on its own at QuarantineAt.
	ResponseAuto = "auto"
	// ResponseApprove: the playbook restricts and waits for an operator
	// to approve the quarantine.
	ResponseApprove = "approve"
)

// Defaults of ResponsePolicy.
const (
	DefaultRestrictAt   = 50
	DefaultQuarantineAt = 80
)

// How a device class gets its identities.
const (
	// IdentityDelegated: the device's gateway fetches the device's SVID
	// from its own SPIRE agent through SPIRE's Delegated Identity API and
	// hands it on; the device runs no SPIRE software.
	IdentityDelegated = "delegated"
	// IdentityAgent: the device runs its own SPIRE agent.
	IdentityAgent = "agent"
)

// AttestationPolicy requires a device to hold a verified attestation younger
// than MaxAge whose firmware matches one of the reference values.
type AttestationPolicy struct {
	MaxAge string `yaml:"maxAge" json:"maxAge"`
	// Formats are the evidence formats accepted (AttestTPM2Quote,
	// AttestDICE, AttestEAT); empty accepts all.
	Formats []string `yaml:"formats,omitempty" json:"formats,omitempty"`
	// PCRs are the SHA-256 PCRs a TPM quote must cover (default [16]).
	PCRs []int `yaml:"pcrs,omitempty" json:"pcrs,omitempty"`
	// DICERoots are PEM certificates a DICE chain must end in.
	DICERoots []string `yaml:"diceRoots,omitempty" json:"diceRoots,omitempty"`
	// EKRoots are PEM certificates (TPM manufacturers' CAs) a device's TPM
	// endorsement key certificate must chain to for enrollment by EK
	// certificate and credential activation (docs/attestation-ek.md).
	EKRoots []string `yaml:"ekRoots,omitempty" json:"ekRoots,omitempty"`
	// OnFailure is what failed evidence does: OnFailureDeny (the default)
	// or OnFailureQuarantine.
	OnFailure string `yaml:"onFailure,omitempty" json:"onFailure,omitempty"`
	// SPIRE says how the class's gateways, and its devices of identity
	// agent, join SPIRE: "" (the default: join tokens), SPIREOnboard (the
	// vigil_tpm node attestor) or SPIRERequired (vigil_tpm, and their
	// identities also need a vigil_tpm:firmware selector of a current
	// reference value). See docs/spire-tpm.md.
	SPIRE    string        `yaml:"spire,omitempty" json:"spire,omitempty"`
	Firmware []FirmwareRef `yaml:"firmware,omitempty" json:"firmware,omitempty"`
}

// How a class's subjects join SPIRE (AttestationPolicy.SPIRE).
const (
	SPIREOnboard  = "onboard"
	SPIRERequired = "required"
)

// Evidence formats of AttestationPolicy.Formats.
const (
	AttestTPM2Quote = "tpm2-quote"
	AttestDICE      = "dice"
	AttestEAT       = "eat"
)

// What failed evidence does (AttestationPolicy.OnFailure).
const (
	OnFailureDeny       = "deny"
	OnFailureQuarantine = "quarantine"
)

// FirmwareRef is one acceptable firmware image.
type FirmwareRef struct {
	Version string `yaml:"version" json:"version"`
	SHA256  string `yaml:"sha256" json:"sha256"`
}

// Device is one physical device behind a gateway; its zone is its gateway's.
type Device struct {
	Name    string `yaml:"name" json:"name"`
	Class   string `yaml:"class" json:"class"`
	Gateway string `yaml:"gateway" json:"gateway"`
	Labels  Labels `yaml:"labels,omitempty" json:"labels,omitempty"`
}

// Protocols a service may speak.
const (
	ProtocolHTTP = "http"
	ProtocolGRPC = "grpc"
	ProtocolTCP  = "tcp"
)

// Service is a destination: a cloud service or an edge application.
type Service struct {
	Name      string   `yaml:"name" json:"name"`
	Zone      string   `yaml:"zone" json:"zone"`
	Protocol  string   `yaml:"protocol" json:"protocol"`
	Hosts     []string `yaml:"hosts,omitempty" json:"hosts,omitempty"`
	Endpoints []string `yaml:"endpoints,omitempty" json:"endpoints,omitempty"`
	// Backends are the service's own processes behind the zone's cloud
	// edge. When given, the edge fronts the service: it listens on the
	// endpoints' port, admits only what the flows allow and forwards to a
	// backend. Without them clients reach the endpoints directly.
	Backends []string `yaml:"backends,omitempty" json:"backends,omitempty"`
	Labels   Labels   `yaml:"labels,omitempty" json:"labels,omitempty"`
}

// Flow is one entry of the allow-list. Traffic that no flow allows is denied.
type Flow struct {
	Name      string     `yaml:"name" json:"name"`
	From      Selector   `yaml:"from" json:"from"`
	To        Selector   `yaml:"to" json:"to"`
	HTTP      *HTTPMatch `yaml:"http,omitempty" json:"http,omitempty"`
	RateLimit string     `yaml:"rateLimit,omitempty" json:"rateLimit,omitempty"`
	// Essential flows stay allowed while the subject's risk is at or above
	// its class's restrictAt; every other flow is then denied.
	Essential bool   `yaml:"essential,omitempty" json:"essential,omitempty"`
	Labels    Labels `yaml:"labels,omitempty" json:"labels,omitempty"`
}

// Selector picks subjects; every field that is given must match.
//
// A selector that names services (Services or Service) picks services,
// narrowed by Zones. Any other selector picks devices: Zones, Classes,
// Devices and Gateways (the gateway a device sits behind) narrow it.
type Selector struct {
	Zones    []string `yaml:"zones,omitempty" json:"zones,omitempty"`
	Classes  []string `yaml:"classes,omitempty" json:"classes,omitempty"`
	Devices  []string `yaml:"devices,omitempty" json:"devices,omitempty"`
	Gateways []string `yaml:"gateways,omitempty" json:"gateways,omitempty"`
	Services []string `yaml:"services,omitempty" json:"services,omitempty"`
	Service  string   `yaml:"service,omitempty" json:"service,omitempty"`
}

// HTTPMatch restricts a flow to methods and paths. A path is matched exactly,
// or as a prefix when it ends in "*". Empty lists match anything.
type HTTPMatch struct {
	Methods []string `yaml:"methods,omitempty" json:"methods,omitempty"`
	Paths   []string `yaml:"paths,omitempty" json:"paths,omitempty"`
}
