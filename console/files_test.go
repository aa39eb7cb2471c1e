package console

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func serve(t *testing.T, h http.Handler, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(method, target, nil))
	return w
}

func checkSecurityHeaders(t *testing.T, what string, h http.Header) {
	t.Helper()
	csp := h.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("%s: CSP %q lacks %q", what, csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
		t.Errorf("%s: CSP %q allows inline script or eval", what, csp)
	}
	if got := h.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options %q", what, got)
	}
	if got := h.Get("X-Frame-Options"); got != "DENY" {
		t.Errorf("%s: X-Frame-Options %q", what, got)
	}
	if got := h.Get("Referrer-Policy"); got != "no-referrer" {
		t.Errorf("%s: Referrer-Policy %q", what, got)
	}
}

func TestFilesServeThePage(t *testing.T) {
	h := Files()
	for _, target := range []string{"/ui/", "/ui/index.html"} {
		w := serve(t, h, "GET", target)
		if w.Code != 200 {
			t.Fatalf("GET %s: %d", target, w.Code)
		}
		if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
			t.Errorf("GET %s: Content-Type %q", target, ct)
		}
		if !strings.Contains(w.Body.String(), "<title>Vigil console</title>") {
			t.Errorf("GET %s: not the console page", target)
		}
		checkSecurityHeaders(t, "GET "+target, w.Header())
		if w.Header().Get("ETag") == "" || w.Header().Get("Cache-Control") != "no-cache" {
			t.Errorf("GET %s: ETag %q Cache-Control %q", target, w.Header().Get("ETag"), w.Header().Get("Cache-Control"))
		}
	}
	w := serve(t, h, "GET", "/ui/app.js")
	if ct := w.Header().Get("Content-Type"); w.Code != 200 || !strings.Contains(ct, "javascript") {
		t.Errorf("GET /ui/app.js: %d %q", w.Code, ct)
	}
	checkSecurityHeaders(t, "GET /ui/app.js", w.Header())
	w = serve(t, h, "GET", "/ui/app.css")
	if ct := w.Header().Get("Content-Type"); w.Code != 200 || !strings.HasPrefix(ct, "text/css") {
		t.Errorf("GET /ui/app.css: %d %q", w.Code, ct)
	}

	// HEAD answers without a body; a matching ETag gets 304.
	w = serve(t, h, "HEAD", "/ui/")
	if w.Code != 200 || w.Body.Len() != 0 {
		t.Errorf("HEAD /ui/: %d with %d bytes", w.Code, w.Body.Len())
	}
	etag := serve(t, h, "GET", "/ui/app.js").Header().Get("ETag")
	req := httptest.NewRequest("GET", "/ui/app.js", nil)
	req.Header.Set("If-None-Match", etag)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotModified {
		t.Errorf("If-None-Match %s: %d, want 304", etag, rec.Code)
	}
}

func TestFilesRefuseWhatIsNotThere(t *testing.T) {
	h := Files()
	for _, target := range []string{
		"/ui/nope.js",
		"/ui/../go.mod",
		"/ui/%2e%2e/go.mod",
		"/ui/%2e%2e/x",
		"/ui/..%2fgo.mod",
		"/ui/web/app.js",
		"/ui/web/index.html",
		"/ui//app.js",
		"/ui/./app.js",
		"/ui/app.js/",
		"/ui/APP.JS",
		"/ui/files.go",
		"/ui/hub.go",
		"/ui/web",
		"/ui/web/",
	} {
		w := serve(t, h, "GET", target)
		if w.Code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404 (body %.60q)", target, w.Code, w.Body.String())
		}
		if strings.Contains(w.Body.String(), "module ") || strings.Contains(w.Body.String(), "package console") {
			t.Errorf("GET %s served a file from outside the console: %.80q", target, w.Body.String())
		}
		checkSecurityHeaders(t, "GET "+target, w.Header())
	}
	for _, m := range []string{"POST", "PUT", "DELETE", "PATCH", "OPTIONS"} {
		w := serve(t, h, m, "/ui/")
		if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("%s /ui/: %d Allow %q, want 405 GET, HEAD", m, w.Code, w.Header().Get("Allow"))
		}
		checkSecurityHeaders(t, m+" /ui/", w.Header())
	}
}

// TestPageReferencesExist: every script and style the page names is
// served, from this origin.
func TestPageReferencesExist(t *testing.T) {
	h := Files()
	page := serve(t, h, "GET", "/ui/").Body.String()
	refs := regexp.MustCompile(`<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"`).FindAllStringSubmatch(page, -1)
	if len(refs) < 2 {
		t.Fatalf("the page references %d scripts and styles, want at least 2", len(refs))
	}
	for _, m := range refs {
		ref := m[1]
		if !strings.HasPrefix(ref, "/ui/") {
			t.Errorf("the page loads %q, not from /ui/", ref)
			continue
		}
		if w := serve(t, h, "GET", ref); w.Code != 200 || w.Body.Len() == 0 {
			t.Errorf("the page loads %s, which answers %d", ref, w.Code)
		}
	}
	// No inline script or style: the CSP would refuse them.
	if regexp.MustCompile(`<script\b[^>]*>\s*[^<\s]`).MatchString(page) {
		t.Error("the page has an inline script")
	}
	if regexp.MustCompile(`(?i)<style\b|\sstyle="|\son[a-z]+="`).MatchString(page) {
		t.Error("the page has an inline style or event handler attribute")
	}
}

// TestScriptPutsServerValuesAsTextOnly keeps the rule the CSP backs up:
// the console never parses strings as HTML or code.
func TestScriptPutsServerValuesAsTextOnly(t *testing.T) {
	entries, err := web.ReadDir("web")
	if err != nil {
		t.Fatal(err)
	}
	banned := regexp.MustCompile(`\.(innerHTML|outerHTML)\s*(\+?=)|insertAdjacentHTML\s*\(|document\.write(ln)?\s*\(|\beval\s*\(|\bnew\s+Function\b|\bFunction\s*\(|createContextualFragment|DOMParser|set(Timeout|Interval)\s*\(\s*['"\x60]|javascript:`)
	n := 0
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".js") {
			continue
		}
		n++
		f, err := web.Open("web/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(f)
		f.Close()
		for i, line := range strings.Split(string(data), "\n") {
			if loc := banned.FindString(line); loc != "" {
				t.Errorf("%s:%d: %q: put server values on the page with textContent, never as HTML or code", e.Name(), i+1, loc)
			}
		}
	}
	if n == 0 {
		t.Fatal("no script found")
	}
}
