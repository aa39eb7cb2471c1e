package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// MainModule is the module path of the code under test.
const MainModule = "github.com/vigil-iot/vigil"

// buildTimeout bounds one `go build` of the binary.
const buildTimeout = 10 * time.Minute

var build struct {
	mu   sync.Mutex
	path string
}

// Build compiles cmd/vigil into dir/vigil and returns the binary's path.
// The result is cached for the life of the process: later calls return the
// first binary, whatever dir they pass.
func Build(dir string) (string, error) {
	build.mu.Lock()
	defer build.mu.Unlock()
	if build.path != "" {
		return build.path, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	bin, err := filepath.Abs(filepath.Join(dir, "vigil"))
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, MainModule+"/cmd/vigil")
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("go build of cmd/vigil in %s did not finish within %v: %s", root, buildTimeout, out.String())
		}
		return "", fmt.Errorf("go build of cmd/vigil in %s: %w\n%s", root, err, out.String())
	}
	build.path = bin
	return bin, nil
}

var root struct {
	once sync.Once
	dir  string
	err  error
}

// RepoRoot is the directory of the main module's go.mod. It is found from
// this source file's location (the e2e module sits inside the repository),
// or else by walking up from the working directory.
func RepoRoot() (string, error) {
	root.once.Do(func() {
		var starts []string
		if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
			starts = append(starts, filepath.Dir(file))
		}
		if wd, err := os.Getwd(); err == nil {
			starts = append(starts, wd)
		}
		for _, start := range starts {
			for dir := start; ; dir = filepath.Dir(dir) {
				if isMainModule(filepath.Join(dir, "go.mod")) {
					root.dir = dir
					return
				}
				if filepath.Dir(dir) == dir {
					break
				}
			}
		}
		root.err = fmt.Errorf("cannot find the go.mod of module %s above %s", MainModule, strings.Join(starts, " or "))
	})
	return root.dir, root.err
}

func isMainModule(gomod string) bool {
	f, err := os.Open(gomod)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" {
			return strings.Trim(fields[1], `"`) == MainModule
		}
	}
	return false
}

// ExamplePath is the path of a file under the repository's examples/, such
// as "smart-city/topology.yaml".
func ExamplePath(name string) (string, error) {
	dir, err := RepoRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "examples", filepath.FromSlash(name))
	if _, err := os.Stat(p); err != nil {
		return "", errors.Join(fmt.Errorf("example %s", name), err)
	}
	return p, nil
}

var tools struct {
	mu    sync.Mutex
	paths map[string]string
}

// BuildTool compiles the e2e module's cmd/<name> into dir/<name> and
// returns the binary's path; like Build, once per process.
func BuildTool(dir, name string) (string, error) {
	tools.mu.Lock()
	defer tools.mu.Unlock()
	if p := tools.paths[name]; p != "" {
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	bin, err := filepath.Abs(filepath.Join(dir, name))
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/"+name)
	cmd.Dir = filepath.Join(root, "e2e")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build of e2e/cmd/%s: %w\n%s", name, err, out)
	}
	if tools.paths == nil {
		tools.paths = map[string]string{}
	}
	tools.paths[name] = bin
	return bin, nil
}
