// Package testwait polls a condition in tests until it holds or time runs
// out.
package testwait

import "time"

// T is what For needs of a *testing.T or *testing.B.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
}

// For polls ok every 10ms until it holds, failing t after d with what it
// waited for.
func For(t T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
