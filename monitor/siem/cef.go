package siem

import (
	"strconv"
	"strings"
)

// CEF's header names Vigil as the device vendor and product.
const (
	cefVendor  = "Vigil"
	cefProduct = "Vigil"
)

// CEFSeverity maps an alert severity to CEF's 0–10 scale: low 3,
// medium 6, high 8, critical 10, anything else 0.
func CEFSeverity(severity string) int {
	return [...]int{0, 3, 6, 8, 10}[severityRank(severity)]
}

// FormatCEF renders a as one CEF (version 0) line:
//
//	CEF:0|Vigil|Vigil|<version>|<detector or "incident">|<title>|<0-10>|<extension>
//
// host is the reporting member (dvchost). Header fields escape '\' and '|';
// extension values escape '\', '=', CR and LF; other control characters
// become spaces. The extension keys, in this order, each only when it has a
// value: rt (milliseconds since the epoch), dvchost, externalId (the
// alert's ID), cat (finding or incident), act (the actions, comma
// separated), shost (device), suid (its SPIFFE ID), msg, cs1 zone, cs2
// class, cs3 gateway, cs4 incident, cs5 detector, cs6 incidentStatus,
// cn1 risk (always), flexString1 owner, flexString2 deviceKind, then
// ev_<key> for each evidence entry (keys reduced to A-Z a-z 0-9 _, sorted).
func FormatCEF(a Alert, version, host string) string {
	var b strings.Builder
	b.WriteString("CEF:0|")
	for _, f := range []string{cefVendor, cefProduct, version, a.signature(), a.name()} {
		cefHeader(&b, f)
		b.WriteByte('|')
	}
	b.WriteString(strconv.Itoa(CEFSeverity(a.Severity)))
	b.WriteByte('|')

	e := cefExt{b: &b}
	if !a.Time.IsZero() {
		e.add("rt", strconv.FormatInt(a.Time.UnixMilli(), 10))
	}
	e.add("dvchost", host)
	e.add("externalId", a.ID)
	e.add("cat", a.Kind)
	e.add("act", strings.Join(a.Actions, ","))
	e.add("shost", a.Device)
	e.add("suid", a.SPIFFEID)
	e.add("msg", a.Message)
	e.labelled("cs1", "zone", a.Zone)
	e.labelled("cs2", "class", a.Class)
	e.labelled("cs3", "gateway", a.Gateway)
	e.labelled("cs4", "incident", a.IncidentID)
	e.labelled("cs5", "detector", a.Detector)
	e.labelled("cs6", "incidentStatus", a.IncidentStatus)
	e.labelled("cn1", "risk", strconv.Itoa(a.Risk))
	e.labelled("flexString1", "owner", a.Owner)
	e.labelled("flexString2", "deviceKind", a.DeviceKind)
	for _, k := range sortedKeys(a.Evidence) {
		e.add("ev_"+cefKey(k), a.Evidence[k])
	}
	return b.String()
}

// cefExt writes extension pairs, separated by spaces.
type cefExt struct {
	b *strings.Builder
	n int
}

func (e *cefExt) add(key, value string) {
	if value == "" {
		return
	}
	if e.n > 0 {
		e.b.WriteByte(' ')
	}
	e.n++
	e.b.WriteString(key)
	e.b.WriteByte('=')
	cefValue(e.b, value)
}

// labelled adds key=value with its keyLabel, as CEF's custom fields do.
func (e *cefExt) labelled(key, label, value string) {
	if value == "" {
		return
	}
	e.add(key+"Label", label)
	e.add(key, value)
}

// cefHeader writes a header field: '\' and '|' escaped, line breaks and
// other control characters as spaces.
func cefHeader(b *strings.Builder, s string) {
	for _, r := range s {
		switch {
		case r == '\\' || r == '|':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
}

// cefValue writes an extension value: '\' and '=' escaped, CR and LF as
// \r and \n, other control characters as spaces.
func cefValue(b *strings.Builder, s string) {
	for _, r := range s {
		switch {
		case r == '\\' || r == '=':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f:
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
}

// cefKey reduces an evidence key to the characters a CEF key may have.
func cefKey(k string) string {
	return sanitizeName(k, '_')
}

// sanitizeName replaces every character of s outside A-Z a-z 0-9 _ with
// repl (and an empty s with "_").
func sanitizeName(s string, repl byte) string {
	b := []byte(s)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			b[i] = repl
		}
	}
	if len(b) == 0 {
		return "_"
	}
	return string(b)
}
