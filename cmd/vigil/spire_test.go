package main

import (
	"reflect"
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
