package spire

import "testing"

func TestValidDeviceDir(t *testing.T) {
	for name, want := range map[string]bool{
		"slc-n1-001": true, "": false, ".": false, "..": false, "a/b": false, `a\b`: false, "bundle.pem": false,
	} {
		if got := validDeviceDir(name); got != want {
			t.Errorf("validDeviceDir(%q) = %v, want %v", name, got, want)
		}
	}
}
