package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// layerSettings fills every flag the user did not set from VIGIL_<FLAG>
// (upper case, '-' as '_'), then from the --config file if the command has
// one. A config key that names no flag of the command is an error.
func layerSettings(cmd *cobra.Command) error {
	fromFile, err := readConfigFile(cmd)
	if err != nil {
		return err
	}
	var errs []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" {
			return
		}
		env := "VIGIL_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		// Flags().Set marks the flag as set, so commands can tell a value the
		// user gave in any form from a default.
		if v, ok := os.LookupEnv(env); ok {
			if err := cmd.Flags().Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q: %v", env, v, err))
			}
			return
		}
		if v, ok := fromFile[f.Name]; ok {
			if err := cmd.Flags().Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Sprintf("config %s: %q: %v", f.Name, v, err))
			}
		}
	})
	for k := range fromFile {
		if cmd.Flags().Lookup(k) == nil || k == "config" {
			errs = append(errs, fmt.Sprintf("config file: unknown setting %q", k))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("settings:\n  %s", strings.Join(errs, "\n  "))
	}
	return nil
}

// readConfigFile reads a flat YAML mapping of flag names to values.
func readConfigFile(cmd *cobra.Command) (map[string]string, error) {
	f := cmd.Flags().Lookup("config")
	if f == nil {
		return nil, nil
	}
	path := f.Value.String()
	if !f.Changed {
		path = os.Getenv("VIGIL_CONFIG")
	}
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	var raw map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		switch v.(type) {
		case map[string]any, []any:
			return nil, fmt.Errorf("config file %s: %s must be a single value", path, k)
		}
		out[k] = fmt.Sprint(v)
	}
	return out, nil
}
