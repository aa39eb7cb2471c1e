package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/vigil-iot/vigil/api"
)

// clientFlags are the flags of every command that talks to a member.
type clientFlags struct {
	server    string
	tokenFile string
	caFile    string
	output    string
}

func (c *clientFlags) register(cmd *cobra.Command, withOutput bool) {
	c.registerServer(cmd, api.DefaultAddr, "API address of any Vigil member (env VIGIL_SERVER)", withOutput)
}

// registerServer is register with another default and usage for --server.
func (c *clientFlags) registerServer(cmd *cobra.Command, server, usage string, withOutput bool) {
	cmd.Flags().StringVar(&c.server, "server", server, usage)
	cmd.Flags().StringVar(&c.tokenFile, "token-file", "", "file holding the API token (env VIGIL_TOKEN_FILE; or put the token itself in VIGIL_TOKEN)")
	cmd.Flags().StringVar(&c.caFile, "ca-file", "", "PEM CA bundle that verifies an https --server (env VIGIL_CA_FILE; default: the system's roots)")
	if withOutput {
		cmd.Flags().StringVarP(&c.output, "output", "o", "table", "output format: table, json or yaml")
	}
}

func (c *clientFlags) client() (*api.Client, error) {
	token := os.Getenv("VIGIL_TOKEN")
	if c.tokenFile != "" {
		data, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		if token, err = api.FirstToken(data); err != nil {
			return nil, fmt.Errorf("token file %s: %w", c.tokenFile, err)
		}
	}
	if token == "" {
		return nil, errors.New("no API token: pass --token-file (VIGIL_TOKEN_FILE) or set VIGIL_TOKEN; " +
			"a member writes one to <data-dir>/api-tokens on first start")
	}
	if c.caFile == "" {
		return api.NewClient(c.server, token), nil
	}
	pem, err := os.ReadFile(c.caFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", c.caFile)
	}
	return api.NewConnector(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}).Client(c.server, token), nil
}

// print writes v as JSON or YAML, or calls table for the human form.
func (c *clientFlags) print(w io.Writer, v any, table func(io.Writer)) error {
	switch strings.ToLower(c.output) {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		// Through JSON, so that field names match the JSON form.
		data, err := json.Marshal(v)
		if err != nil {
			return err
		}
		var generic any
		if err := yaml.Unmarshal(data, &generic); err != nil {
			return err
		}
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		defer enc.Close()
		return enc.Encode(generic)
	case "table", "":
		table(w)
		return nil
	}
	return fmt.Errorf("unknown output format %q (want table, json or yaml)", c.output)
}
