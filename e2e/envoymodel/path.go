package envoymodel

import (
	"fmt"
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// normalizePath is ConnectionManagerUtility::maybeNormalizePath: a path
// with a fragment is refused; then path_with_escaped_slashes_action, then
// normalize_path (RFC 3986 dot segments, as Chromium's canonicalizer that
// Envoy uses does it, approximately), then merge_slashes. The query is
// left alone.
func normalizePath(hcm *hcmv3.HttpConnectionManager, h *hmap, o *Outcome) (int, string) {
	full, ok := h.get(":path")
	if !ok {
		return 0, ""
	}
	if strings.Contains(full, "#") {
		return 400, "path has a fragment"
	}
	path, query, hasQuery := strings.Cut(full, "?")
	switch hcm.GetPathWithEscapedSlashesAction() {
	case hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcmv3.HttpConnectionManager_KEEP_UNCHANGED:
	default:
		if un, found := unescapeSlashes(path); found {
			switch hcm.GetPathWithEscapedSlashesAction() {
			case hcmv3.HttpConnectionManager_REJECT_REQUEST:
				return 400, fmt.Sprintf("path %q has an escaped slash or backslash (path_with_escaped_slashes_action: REJECT_REQUEST)", path)
			case hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT:
				return 307, fmt.Sprintf("path %q has escaped slashes: redirect to %q", path, un)
			}
			path = un
		}
	}
	if hcm.GetNormalizePath().GetValue() {
		var ok bool
		if path, ok = canonicalPath(path); !ok {
			return 400, fmt.Sprintf("path %q cannot be normalised", full)
		}
	}
	if hcm.GetMergeSlashes() {
		for strings.Contains(path, "//") {
			path = strings.ReplaceAll(path, "//", "/")
		}
	}
	if hasQuery {
		path += "?" + query
	}
	if path != full {
		o.step("hcm: path %q normalised to %q", full, path)
	}
	h.set(":path", path)
	return 0, ""
}

// unescapeSlashes replaces %2F and %5C (any case) by / and \.
func unescapeSlashes(p string) (string, bool) {
	r := strings.NewReplacer("%2F", "/", "%2f", "/", "%5C", `\`, "%5c", `\`)
	out := r.Replace(p)
	return out, out != p
}

const unreservedChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"

// canonicalPath decodes percent-encoded unreserved characters (so %2e is
// a dot), upper-cases other escapes, turns \ into /, percent-encodes
// characters a path may not hold, and removes dot segments.
func canonicalPath(p string) (string, bool) {
	if !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, `\`) {
		return "", false
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		ch := p[i]
		switch {
		case ch == '%' && i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]):
			v := unhex(p[i+1])<<4 | unhex(p[i+2])
			if strings.IndexByte(unreservedChars, v) >= 0 {
				b.WriteByte(v)
			} else {
				b.WriteString("%" + strings.ToUpper(p[i+1:i+3]))
			}
			i += 2
		case ch == '\\':
			b.WriteByte('/')
		case ch <= 0x20 || ch >= 0x7f || strings.IndexByte("\"<>`{}", ch) >= 0:
			fmt.Fprintf(&b, "%%%02X", ch)
		default:
			b.WriteByte(ch)
		}
	}
	return removeDotSegments(b.String()), true
}

// removeDotSegments is RFC 3986 section 5.2.4.
func removeDotSegments(p string) string {
	segs := strings.Split(p, "/")[1:]
	var out []string
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
