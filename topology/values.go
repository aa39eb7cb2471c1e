package topology

import (
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Rate is a request budget: N requests per Per.
type Rate struct {
	N   int           `json:"n"`
	Per time.Duration `json:"per"`
}

// IsZero reports whether no rate was given.
func (r Rate) IsZero() bool { return r.N == 0 }

// PerSecond is the rate as a float, for token buckets.
func (r Rate) PerSecond() float64 {
	if r.Per == 0 {
		return 0
	}
	return float64(r.N) / r.Per.Seconds()
}

func (r Rate) String() string {
	if r.IsZero() {
		return ""
	}
	unit := map[time.Duration]string{time.Second: "s", time.Minute: "m", time.Hour: "h"}[r.Per]
	return strconv.Itoa(r.N) + "/" + unit
}

// ParseRate reads "N/s", "N/m" or "N/h" with N a positive integer.
func ParseRate(s string) (Rate, error) {
	n, unit, ok := strings.Cut(s, "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q must look like N/s, N/m or N/h", s)
	}
	count, err := strconv.Atoi(n)
	if err != nil || count <= 0 || count > 1_000_000_000 {
		return Rate{}, fmt.Errorf("rate %q must start with a whole number from 1 to 1000000000", s)
	}
	per, ok := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[unit]
	if !ok {
		return Rate{}, fmt.Errorf("rate %q has unit %q; use s, m or h", s, unit)
	}
	return Rate{N: count, Per: per}, nil
}

// ParseMaxAge reads a positive duration such as "90s", "24h" or "7d".
func ParseMaxAge(s string) (time.Duration, error) {
	var d time.Duration
	var err error
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		n, err = strconv.Atoi(days)
		if err == nil && n > 0 && n <= maxDays {
			return time.Duration(n) * 24 * time.Hour, nil
		}
		err = fmt.Errorf("bad day count")
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("duration %q must be positive, like 90s, 24h or 7d", s)
	}
	return d, nil
}

// maxDays bounds a duration given in days (ten years).
const maxDays = 3650

// ParseLearning reads a duration that may be zero: "0s", "90m", "24h" or
// "7d", at most 3650 days (a class's response.learning).
func ParseLearning(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 && n <= maxDays {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	} else if d, err := time.ParseDuration(s); err == nil && d >= 0 && d <= maxDays*24*time.Hour {
		return d, nil
	}
	return 0, fmt.Errorf("duration %q must be zero or positive, like 0s, 12h or 7d (at most %dd)", s, maxDays)
}

// IsName reports whether s is a lowercase DNS label: 1-63 characters of
// a-z, 0-9 and '-', starting and ending with a letter or digit.
func IsName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// isTrustDomain follows the SPIFFE spec: lowercase letters, digits, '.', '-'
// and '_', at most 255 characters.
func isTrustDomain(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// isHost accepts a DNS name made of labels; a service host names the request
// authority (":port" is not part of it).
func isHost(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if !IsName(label) {
			return false
		}
	}
	return true
}

func checkEndpoint(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("endpoint %q must be host:port", s)
	}
	if net.ParseIP(host) == nil && !isHost(host) {
		return fmt.Errorf("endpoint %q has an invalid host", s)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("endpoint %q has an invalid port", s)
	}
	return nil
}

func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

var httpMethods = map[string]bool{
	"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true,
	"DELETE": true, "OPTIONS": true, "CONNECT": true, "TRACE": true,
}

// PathMatch is one allowed request path: exact, or a prefix.
type PathMatch struct {
	Value  string `json:"value"`
	Prefix bool   `json:"prefix"`
}

// Matches reports whether the request path p is allowed by m.
func (m PathMatch) Matches(p string) bool {
	if m.Prefix {
		return strings.HasPrefix(p, m.Value)
	}
	return p == m.Value
}

func parsePath(s string) (PathMatch, error) {
	if !strings.HasPrefix(s, "/") {
		return PathMatch{}, fmt.Errorf("path %q must start with /", s)
	}
	if i := strings.IndexByte(s, '*'); i >= 0 && i != len(s)-1 {
		return PathMatch{}, fmt.Errorf("path %q may only have * as its last character", s)
	}
	if strings.ContainsAny(s, "?# \t\r\n") {
		return PathMatch{}, fmt.Errorf("path %q must not contain a query, fragment or white space", s)
	}
	if seg := s + "/"; strings.Contains(seg, "/../") || strings.Contains(seg, "/./") || strings.Contains(s, "//") {
		return PathMatch{}, fmt.Errorf("path %q must be normalised (no //, . or .. segments)", s)
	}
	if why := PathProblem(strings.TrimSuffix(s, "*")); why != "" {
		return PathMatch{}, fmt.Errorf("path %q must be normalised: it %s", s, why)
	}
	if v, ok := strings.CutSuffix(s, "*"); ok {
		return PathMatch{Value: v, Prefix: true}, nil
	}
	return PathMatch{Value: s}, nil
}

// PathProblem says why a request path (without its query) is not in the
// one form that flows are matched against, or "" when it is: it starts
// with "/", has no empty, "." or ".." segment (a trailing "/" is allowed),
// no "\", no control character or space, and no percent-encoding of ".",
// "/", "\" or "%" itself (an encoded dot segment or separator means
// something else to the service than to the matcher) nor an invalid one.
// Envoy's normalize_path, merge_slashes and
// path_with_escaped_slashes_action turn many such paths into this form, or
// reject them; an authorizer must not rely on every proxy doing so.
func PathProblem(p string) string {
	if !strings.HasPrefix(p, "/") {
		return "does not start with /"
	}
	segStart := 1
	for i := 1; i <= len(p); i++ {
		if i < len(p) {
			c := p[i]
			switch {
			case c <= ' ' || c == 0x7f:
				return fmt.Sprintf("has the control character or space %q at byte %d", c, i)
			case c == '\\':
				return fmt.Sprintf("has a backslash at byte %d", i)
			case c == '%':
				if i+2 >= len(p) || unhex(p[i+1]) < 0 || unhex(p[i+2]) < 0 {
					return fmt.Sprintf("has an invalid percent-encoding at byte %d", i)
				}
				switch b := byte(unhex(p[i+1])<<4 | unhex(p[i+2])); b {
				case '.', '/', '\\', '%':
					return fmt.Sprintf("has an encoded %q (%s) at byte %d", string(rune(b)), p[i:i+3], i)
				}
			}
			if c != '/' {
				continue
			}
		}
		switch seg := p[segStart:i]; {
		case seg == "" && i < len(p):
			return fmt.Sprintf("has an empty segment (//) at byte %d", i)
		case seg == "." || seg == "..":
			return fmt.Sprintf("has a %q segment", seg)
		}
		segStart = i + 1
	}
	return ""
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
