package main

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/node"
	"github.com/vigil-iot/vigil/spire"
)

// TestSPIRESettings: the SPIRE flags take VIGIL_* variables like every
// other flag, and their defaults are the spire package's.
func TestSPIRESettings(t *testing.T) {
	var c node.SPIREConfig
	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	registerSPIREFlags(cmd.Flags(), &c)
	if !reflect.DeepEqual(c.Options, spire.DefaultOptions()) || c.Socket != "" {
		t.Fatalf("defaults: %+v", c)
	}
	t.Setenv("VIGIL_SPIRE_SOCKET", "/run/spire/server/api.sock")
	t.Setenv("VIGIL_SPIRE_DEVICE_TTL", "90s")
	t.Setenv("VIGIL_SPIRE_GATEWAY_SELECTOR", "unix:uid:101,unix:gid:101")
	if err := layerSettings(cmd); err != nil {
		t.Fatal(err)
	}
	if c.Socket != "/run/spire/server/api.sock" || c.Options.DeviceTTL != 90*time.Second ||
		!reflect.DeepEqual(c.Options.GatewaySelectors, []string{"unix:uid:101", "unix:gid:101"}) {
		t.Errorf("from the environment: %+v", c)
	}
}

func TestReadDevicesFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("# gw-north-1's devices\nslc-n1-001\n\n  slc-n1-002   # pole 2\n"), 0o600)
	got, err := readDevicesFile(good)
	if err != nil || !slices.Equal(got, []string{"slc-n1-001", "slc-n1-002"}) {
		t.Errorf("devices %v, err %v", got, err)
	}
	for name, content := range map[string]string{
		"a path":     "../etc\n",
		"upper case": "SLC-1\n",
		"two names":  "a b\n",
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		os.WriteFile(p, []byte(content), 0o600)
		if _, err := readDevicesFile(p); err == nil || !strings.Contains(err.Error(), ":1:") {
			t.Errorf("%s: err = %v, want the line named", name, err)
		}
	}
	if _, err := readDevicesFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file was read")
	}
}
