package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func settingsCmd(t *testing.T, config string) (*cobra.Command, map[string]*string) {
	t.Helper()
	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	vals := map[string]*string{}
	for _, name := range []string{"data-dir", "api-addr", "node-id", "raft-addr"} {
		vals[name] = cmd.Flags().String(name, "default-"+name, "")
	}
	cmd.Flags().String("config", "", "")
	if config != "" {
		path := filepath.Join(t.TempDir(), "vigil.yaml")
		if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd.Flags().Set("config", path)
	}
	return cmd, vals
}

func TestFlagsBeatEnvironmentWhichBeatsTheConfigFile(t *testing.T) {
	cmd, vals := settingsCmd(t, "data-dir: /from/file\napi-addr: 10.0.0.1:7070\nnode-id: file-node\n")
	t.Setenv("VIGIL_API_ADDR", "10.0.0.2:7070")
	t.Setenv("VIGIL_NODE_ID", "env-node")
	cmd.Flags().Set("node-id", "flag-node")
	if err := layerSettings(cmd); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"data-dir":  "/from/file",    // only in the file
		"api-addr":  "10.0.0.2:7070", // env beats file
		"node-id":   "flag-node",     // flag beats env and file
		"raft-addr": "default-raft-addr",
	}
	for k, w := range want {
		if got := *vals[k]; got != w {
			t.Errorf("%s = %q, want %q", k, got, w)
		}
	}
}

func TestUnknownConfigKeysAreErrors(t *testing.T) {
	cmd, _ := settingsCmd(t, "data-dir: /x\nnode_id: typo\nraft:\n  addr: 1\n")
	err := layerSettings(cmd)
	if err == nil || !strings.Contains(err.Error(), "raft must be a single value") {
		t.Fatalf("err = %v", err)
	}
	cmd, _ = settingsCmd(t, "data-dir: /x\nnode_id: typo\n")
	err = layerSettings(cmd)
	if err == nil || !strings.Contains(err.Error(), `unknown setting "node_id"`) {
		t.Fatalf("err = %v", err)
	}
}
