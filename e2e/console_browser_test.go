package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/vigil-iot/vigil/e2e/harness"
	"github.com/vigil-iot/vigil/topology"
	"github.com/vigil-iot/vigil/topology/topologytest"
)

// TestConsoleInABrowser drives Debian's Chromium (headless, through the
// DevTools protocol from Go) against a two-member cluster, as an operator
// would: a bad token is refused; a good one signs in; a device is found by
// search, quarantined with a reason, and its requests, sent to the other
// member's ext_authz, show up denied in the live decision stream (merged
// from both members); it is released and shows up allowed again. A
// one-time login link works once. Screenshots of every page are written to
// VIGIL_ARTIFACT_DIR (default e2e/artifacts/console). Without Chromium the
// test skips, unless VIGIL_REQUIRE_CHROMIUM is set (as .ci/run sets it).
func TestConsoleInABrowser(t *testing.T) {
	browser := findChromium(t)
	// Without the monitor: one device asking ten times a second while its
	// class is idle is an anomaly it would rightly restrict, and this test
	// is about what the operator does, not what the monitor does.
	c := harness.Start(t, harness.Options{Binary: vigilBin, Members: 2, Args: []string{"--monitor=false"}})
	doc := topologytest.Generate(topologytest.Spec{Zones: 2, GatewaysPerZone: 2, Devices: 240, NoAttestation: true})
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := c.Client(0).ApplyTopology(ctxFor(t, time.Minute), data)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := topology.NewIndex(doc)
	if err != nil {
		t.Fatal(err)
	}
	device := topologytest.DeviceName(7) // a street light: flow sensor-telemetry allows its telemetry
	id, _ := ix.SPIFFEID(topology.DeviceSubject(device))
	cl1 := c.Client(1)
	cl1.MinRevision = rev
	if _, err := cl1.Subject(ctxFor(t, 10*time.Second), topology.KindDevice, device); err != nil {
		t.Fatal(err)
	}

	// The device's gateway keeps asking member 1 about its telemetry.
	authz, _ := authzClient(t, c, 1)
	stopTraffic := make(chan struct{})
	var sent atomic.Int64
	trafficDone := make(chan struct{})
	go func() {
		defer close(trafficDone)
		for i := 0; i < 3000; i++ { // bounded: at most five minutes
			select {
			case <-stopTraffic:
				return
			case <-time.After(100 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if _, err := authz.Check(ctx, telemetryCheck(id)); err == nil {
				sent.Add(1)
			}
			cancel()
		}
	}()
	t.Cleanup(func() { close(stopTraffic); <-trafficDone })

	artifacts := artifactDir(t, "console")
	base := "http://" + c.Member(0).APIAddr
	ctx := newBrowser(t, browser)
	shot := func(name string) step {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			buf, err := chromedp.FullScreenshot(100)(ctx, tg)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(artifacts, name+".png"), buf, 0o644)
		})
	}
	pageText := func() string {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		body, _ := chromedp.Run(sctx, chromedp.Evaluate[string]("document.body.innerText"))
		return body
	}
	do := func(what string, timeout time.Duration, steps ...step) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := chromedp.Do(sctx, steps...); err != nil {
			body := pageText()
			fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
			chromedp.Do(fctx, shot("failed-"+strings.ReplaceAll(what, " ", "-")))
			fcancel()
			t.Fatalf("%s: %v\npage text:\n%s\nmember logs:\n%s", what, err, body, c.LogTails(30))
		}
	}
	// Every control on a page has an accessible name (a label, aria-label or
	// text), and every image-less link and button can be reached by Tab.
	unlabelled := func(page string) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		bad, err := chromedp.Run(sctx, chromedp.Evaluate[[]string](`(() => {
			const out = [];
			for (const e of document.querySelectorAll('input, select, textarea, button, a[href]')) {
				if (e.closest('[hidden]') || e.offsetParent === null) continue;
				const labelled = (e.id && document.querySelector('label[for="' + e.id + '"]')) || e.getAttribute('aria-label') ||
					(e.tagName === 'BUTTON' || e.tagName === 'A') && e.textContent.trim();
				if (!labelled) out.push(e.outerHTML.slice(0, 120));
				if (e.tabIndex < 0) out.push('not focusable: ' + e.outerHTML.slice(0, 120));
			}
			return out;
		})()`))
		if err != nil {
			t.Fatalf("%s: accessibility check: %v", page, err)
		}
		if len(bad) > 0 {
			t.Errorf("%s: controls without an accessible name or not reachable by keyboard:\n%s", page, strings.Join(bad, "\n"))
		}
	}
	textOf := func(sel string) string {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		s, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("read %s: %v\npage text:\n%s", sel, err, pageText())
		}
		return s
	}

	// A bad token is refused, and nothing of the console shows.
	do("refuse a bad token", 30*time.Second,
		chromedp.Navigate(base+"/ui/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), "not-a-token-of-this-cluster-0123456789"),
		chromedp.Click(chromedp.CSS("#signin")),
		waitText("#login-error", "refused"),
		shot("login-refused"))
	unlabelled("login")
	if navHidden, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById('nav').hidden`)); err != nil || !navHidden {
		t.Fatal("the console's pages are shown after a refused token")
	}

	// The right token signs in; the topology page lists the fleet.
	do("sign in", 30*time.Second,
		chromedp.Clear(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), c.Token()),
		chromedp.Click(chromedp.CSS("#signin")),
		chromedp.WaitVisible(chromedp.CSS("#nav")),
		waitText(".summary", "240"),
		waitText("#devices-title", "All devices"),
		shot("topology"))
	unlabelled("topology")
	if s := textOf("#session-text"); !strings.Contains(s, c.Member(0).ID) {
		t.Fatalf("the header names no member: %q", s)
	}

	// Find the device by search, open it, quarantine it with a reason.
	do("find the device", 30*time.Second,
		chromedp.SendKeys(chromedp.CSS("#device-search"), device),
		chromedp.Click(chromedp.CSS("#search-button")),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`tr[data-device=%q] a`, device))),
		shot("search"),
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-device=%q] a`, device))),
		chromedp.WaitVisible(chromedp.CSS("#quarantine-reason")),
		shot("device"))
	unlabelled("device")
	do("quarantine it", 30*time.Second,
		chromedp.SendKeys(chromedp.CSS("#quarantine-reason"), "e2e: tamper switch opened"),
		chromedp.Click(chromedp.CSS("#quarantine-button")),
		chromedp.WaitVisible(chromedp.CSS("#release")),
		waitText("#quarantine-state", "e2e: tamper switch opened"))
	sub, err := cl1.Subject(ctxFor(t, 10*time.Second), topology.KindDevice, device)
	if err != nil || !sub.Quarantined || sub.State.Quarantine.Reason != "e2e: tamper switch opened" {
		t.Fatalf("after the console's quarantine, member 1 says %+v (%v)", sub, err)
	}

	// Its requests, decided at member 1, show up denied in member 0's stream.
	denied := fmt.Sprintf(`#decisions tr.decision-deny[data-subject=%q]`, device)
	do("see it denied live", time.Minute,
		chromedp.Click(chromedp.CSS("#watch-decisions")),
		chromedp.WaitVisible(chromedp.CSS("#filter-device")),
		waitText("#stream-status", "Live"),
		chromedp.WaitVisible(chromedp.CSS(denied)),
		shot("decisions-denied"))
	unlabelled("decisions")
	if row := textOf(denied); !strings.Contains(row, "quarantined") || !strings.Contains(row, c.Member(1).ID) {
		t.Fatalf("the denied row does not say quarantined at %s: %q", c.Member(1).ID, row)
	}

	// Release it: allowed again, live.
	allowed := fmt.Sprintf(`#decisions tr.decision-allow[data-subject=%q]`, device)
	do("release it", time.Minute,
		chromedp.Navigate(base+"/ui/#/device/"+device),
		chromedp.WaitVisible(chromedp.CSS("#release")),
		chromedp.Click(chromedp.CSS("#release")),
		waitText("#quarantine-state", "Not quarantined"),
		chromedp.Click(chromedp.CSS("#watch-decisions")),
		chromedp.WaitVisible(chromedp.CSS(allowed)),
		shot("decisions-allowed"))

	// The other pages render what the members say.
	do("incidents page", 30*time.Second, chromedp.Navigate(base+"/ui/#/incidents"), chromedp.WaitVisible(chromedp.CSS("table")), shot("incidents"))
	unlabelled("incidents")
	do("proxies page", 30*time.Second, chromedp.Navigate(base+"/ui/#/proxies"), waitText("#view", "proxies"), shot("proxies"))
	unlabelled("proxies")
	do("cluster page", 30*time.Second, chromedp.Navigate(base+"/ui/#/cluster"),
		waitText("#view table", c.Member(1).ID), waitText("#view", "leader"), shot("cluster"))
	unlabelled("cluster")

	// A one-time login link signs in once; opened again, it is refused.
	link, err := c.Client(0).ConsoleLink(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	do("sign in by link", 30*time.Second,
		chromedp.Click(chromedp.CSS("#signout")),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.Navigate(base+link.Path),
		chromedp.WaitVisible(chromedp.CSS("#nav")),
		waitText(".summary", "240"))
	do("reuse the link", 30*time.Second,
		chromedp.Click(chromedp.CSS("#signout")),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.Navigate("about:blank"),
		chromedp.Navigate(base+link.Path),
		waitText("#login-error", "already used"),
		shot("link-reused"))
	t.Logf("%d checks sent to %s; screenshots in %s", sent.Load(), c.Member(1).ID, artifacts)
}

// step is one browser action that returns nothing.
type step = chromedp.Action[chromedp.Void]

// waitText waits until the element's text contains want.
func waitText(sel, want string) step {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		js := fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.textContent.includes(%q); })()`, sel, want)
		for {
			ok, err := chromedp.Evaluate[bool](js)(ctx, tg)
			if err != nil {
				return err
			}
			if ok {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s never contained %q: %w", sel, want, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
}

// findChromium is Debian's chromium, or the test skips (fails with
// VIGIL_REQUIRE_CHROMIUM set).
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("VIGIL_REQUIRE_CHROMIUM") != "" {
		t.Fatal("chromium is not installed (apt-get install chromium), and VIGIL_REQUIRE_CHROMIUM is set")
	}
	t.Skip("chromium is not installed (apt-get install chromium)")
	return ""
}

// newBrowser starts a headless Chromium with a laptop-sized window; it is
// stopped when the test ends.
func newBrowser(t *testing.T, path string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1366, 860),
		chromedp.NoSandbox, // CI runs as root, where Chromium's sandbox cannot start
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// artifactDir is where a test writes files for people to look at:
// VIGIL_ARTIFACT_DIR/name, or e2e/artifacts/name.
func artifactDir(t *testing.T, name string) string {
	t.Helper()
	root := os.Getenv("VIGIL_ARTIFACT_DIR")
	if root == "" {
		repo, err := harness.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		root = filepath.Join(repo, "e2e", "artifacts")
	}
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
