package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

// SPIRETPMPlugin is a built vigil_tpm plugin binary and its SHA-256, what
// plugin_cmd and plugin_checksum take.
type SPIRETPMPlugin struct {
	Path, SHA256 string
}

var spireTPM struct {
	mu            sync.Mutex
	server, agent SPIRETPMPlugin
}

// BuildSPIRETPM compiles cmd/vigil-tpm-attestor-server and
// cmd/vigil-tpm-attestor-agent of the main module into dir, once per process.
func BuildSPIRETPM(dir string) (server, agent SPIRETPMPlugin, err error) {
	spireTPM.mu.Lock()
	defer spireTPM.mu.Unlock()
	if spireTPM.server.Path != "" {
		return spireTPM.server, spireTPM.agent, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return server, agent, err
	}
	out, err := filepath.Abs(dir)
	if err != nil {
		return server, agent, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out+string(filepath.Separator),
		MainModule+"/cmd/vigil-tpm-attestor-server", MainModule+"/cmd/vigil-tpm-attestor-agent")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return server, agent, fmt.Errorf("go build of the vigil_tpm plugins: %w\n%s", err, b)
	}
	sum := func(name string) (SPIRETPMPlugin, error) {
		p := filepath.Join(out, name)
		b, err := os.ReadFile(p)
		if err != nil {
			return SPIRETPMPlugin{}, err
		}
		h := sha256.Sum256(b)
		return SPIRETPMPlugin{Path: p, SHA256: hex.EncodeToString(h[:])}, nil
	}
	if server, err = sum("vigil-tpm-attestor-server"); err != nil {
		return server, agent, err
	}
	if agent, err = sum("vigil-tpm-attestor-agent"); err != nil {
		return server, agent, err
	}
	spireTPM.server, spireTPM.agent = server, agent
	return server, agent, nil
}
