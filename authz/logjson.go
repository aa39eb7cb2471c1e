package authz

import (
	"strconv"
	"unicode/utf8"
)

// appendDecisionEntry appends the decision-log line of d at seq after
// prev, without its newline: byte for byte what encoding/json (with HTML
// escaping off) makes of decisionEntry{seq, prev, d}, which the verifier
// and every older line are written in, built without reflection because
// the writer encodes every decision of the member (TestDecisionLineMatchesEncodingJSON).
func appendDecisionEntry(b []byte, seq uint64, prev string, d *Decision) ([]byte, error) {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"prev":`...)
	b = appendJSONString(b, prev)
	b = append(b, `,"decision_id":`...)
	b = appendJSONString(b, d.ID)
	b = append(b, `,"time":`...)
	t, err := d.Time.MarshalJSON() // RFC 3339 with nanoseconds, or an error out of range
	if err != nil {
		return b, err
	}
	b = append(b, t...)
	b = append(b, `,"node":`...)
	b = appendJSONString(b, d.Node)
	b = append(b, `,"revision":`...)
	b = strconv.AppendUint(b, uint64(d.Revision), 10)
	for _, f := range [...]struct{ key, value string }{
		{`,"subject":`, d.Subject}, {`,"gateway":`, d.Gateway}, {`,"caller":`, d.Caller},
		{`,"source":`, d.Source}, {`,"service":`, d.Service}, {`,"attestation":`, d.Attestation},
	} {
		if f.value != "" {
			b = append(b, f.key...)
			b = appendJSONString(b, f.value)
		}
	}
	if d.Risk != 0 {
		b = append(b, `,"risk":`...)
		b = strconv.AppendInt(b, int64(d.Risk), 10)
	}
	if d.Method != "" {
		b = append(b, `,"method":`...)
		b = appendJSONString(b, d.Method)
	}
	if d.Path != "" {
		b = append(b, `,"path":`...)
		b = appendJSONString(b, d.Path)
	}
	b = append(b, `,"allowed":`...)
	b = strconv.AppendBool(b, d.Allowed)
	b = append(b, `,"http_status":`...)
	b = strconv.AppendInt(b, int64(d.HTTPStatus), 10)
	b = append(b, `,"reason":`...)
	b = appendJSONString(b, d.Reason)
	b = append(b, `,"policy_hash":`...)
	b = appendJSONString(b, d.PolicyHash)
	b = append(b, `,"latency_us":`...)
	b = strconv.AppendInt(b, d.LatencyUS, 10)
	if d.StaleMS != 0 {
		b = append(b, `,"stale_ms":`...)
		b = strconv.AppendInt(b, d.StaleMS, 10)
	}
	return append(b, '}'), nil
}

// appendJSONString appends s as a JSON string the way encoding/json does
// with HTML escaping off: `"` and `\` escaped, control characters as \b,
// \f, \n, \r, \t or \u00XX, invalid UTF-8 as \ufffd, U+2028 and U+2029
// escaped, everything else as it is.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
