package authz

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// DefaultPolicy is Vigil's own policy (policy/vigil.rego).
//
//go:embed policy/vigil.rego
var DefaultPolicy string

// DefaultQuery selects Vigil's decision in DefaultPolicy.
const DefaultQuery = "data.vigil.authz.decision"

// ErrUndefined is returned when the policy's query has no result for an
// input; the request is then denied.
var ErrUndefined = errors.New("policy decision is undefined")

// Policy is one compiled, prepared policy.
type Policy struct {
	// Hash identifies the policy's modules and data; every decision records it.
	Hash string
	// Source says where it came from: a directory, or "embedded default".
	Source string
	Query  string
	// Cacheable is true for Vigil's default policy, whose result depends
	// only on input.vigil and the principal.
	Cacheable bool

	prepared rego.PreparedEvalQuery
	// native decides as the Rego does, in Go (decideDefault); set only for
	// Vigil's default policy, unless WithRego took it away.
	native func(*resolution) Result
}

// Native reports whether Checks are decided by the policy's Go form
// rather than by OPA.
func (p *Policy) Native() bool { return p.native != nil }

// WithRego returns p decided by OPA evaluating its Rego, also where a Go
// form exists (--policy-engine=rego): the reference the Go form is
// tested against, and a way back should the two ever differ.
func (p *Policy) WithRego() *Policy {
	q := *p
	q.native = nil
	return &q
}

// Engine evaluates the current policy. A new policy replaces the old one
// atomically, and only after it compiled and answered a sample request.
type Engine struct {
	cur atomic.Pointer[Policy]
	log *slog.Logger
}

// NewEngine returns an engine with Vigil's default policy loaded.
func NewEngine(ctx context.Context, log *slog.Logger) (*Engine, error) {
	if log == nil {
		log = slog.Default()
	}
	e := &Engine{log: log}
	p, err := Compile(ctx, map[string]string{"vigil.rego": DefaultPolicy}, nil, DefaultQuery, "embedded default")
	if err != nil {
		return nil, fmt.Errorf("default policy: %w", err)
	}
	p.Cacheable = true
	p.native = decideDefault
	e.cur.Store(p)
	return e, nil
}

// Current is the policy in force.
func (e *Engine) Current() *Policy { return e.cur.Load() }

// Use makes p the policy in force.
func (e *Engine) Use(p *Policy) {
	e.cur.Store(p)
	e.log.Info("authz: policy in force", "source", p.Source, "query", p.Query, "hash", p.Hash[:12])
}

// Eval decides for one input with the policy in force.
func (e *Engine) Eval(ctx context.Context, input ast.Value) (Result, *Policy, error) {
	p := e.cur.Load()
	res, err := p.Eval(ctx, input)
	return res, p, err
}

// Eval decides for one input. An error, an undefined result or a result
// of the wrong shape is an error, which callers turn into a deny.
func (p *Policy) Eval(ctx context.Context, input ast.Value) (Result, error) {
	rs, err := p.prepared.Eval(ctx, rego.EvalParsedInput(input))
	if err != nil {
		return Result{}, fmt.Errorf("policy evaluation: %w", err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return Result{}, fmt.Errorf("%w (query %s)", ErrUndefined, p.Query)
	}
	return ParseResult(rs[0].Expressions[0].Value)
}

// Compile parses, compiles and prepares modules (file name → Rego source)
// with data under the query, then checks it answers a sample request.
func Compile(ctx context.Context, modules map[string]string, data map[string]any, query, source string) (*Policy, error) {
	parsed := make(map[string]*ast.Module, len(modules))
	for name, src := range modules {
		m, err := ast.ParseModuleWithOpts(name, src, ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			return nil, err
		}
		parsed[name] = m
	}
	return compileParsed(ctx, parsed, modules, data, query, source)
}

func compileParsed(ctx context.Context, parsed map[string]*ast.Module, raw map[string]string, data map[string]any, query, source string) (*Policy, error) {
	if query == "" {
		query = DefaultQuery
	}
	if data == nil {
		data = map[string]any{}
	}
	opts := []func(*rego.Rego){rego.Query(query), rego.Store(inmem.NewFromObject(data))}
	for _, name := range slices.Sorted(mapsKeys(parsed)) {
		opts = append(opts, rego.ParsedModule(parsed[name]))
	}
	pq, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		return nil, err
	}
	p := &Policy{Hash: policyHash(raw, data, query), Source: source, Query: query, prepared: pq}
	if _, err := p.Eval(ctx, sampleInput()); err != nil {
		return nil, fmt.Errorf("policy does not answer a sample request: %w", err)
	}
	return p, nil
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func policyHash(modules map[string]string, data map[string]any, query string) string {
	h := sha256.New()
	fmt.Fprintf(h, "query %q\n", query)
	for _, name := range slices.Sorted(mapsKeys(modules)) {
		fmt.Fprintf(h, "module %q %d\n%s\n", name, len(modules[name]), modules[name])
	}
	d, _ := json.Marshal(data) // map keys are sorted by encoding/json
	h.Write(d)
	return hex.EncodeToString(h.Sum(nil))
}

// sampleInput is a request from an unknown caller; any sane policy
// answers it (with a deny).
func sampleInput() ast.Value {
	v, _ := ast.InterfaceToValue(map[string]any{
		"attributes": map[string]any{
			"source":  map[string]any{"principal": "spiffe://sample.invalid/zone/none/device/none"},
			"request": map[string]any{"http": map[string]any{"method": "GET", "path": "/", "host": "sample.invalid"}},
		},
		"parsed_path":  []any{""},
		"parsed_query": map[string]any{},
		"vigil": map[string]any{
			"revision": 0, "node": "", "subject": nil, "gateway": nil, "service": nil, "flows": []any{},
			"request": map[string]any{"method": "GET", "path": "/", "host": "sample.invalid"},
		},
	})
	return v
}

// LoadDir compiles the Rego modules and data files (JSON or YAML) under dir.
// Test modules (*_test.rego) are left out; `vigil policy test` runs them.
func LoadDir(ctx context.Context, dir, query string) (*Policy, error) {
	res, err := loader.NewFileLoader().WithRegoVersion(ast.RegoV1).Filtered([]string{dir}, func(_ string, info fs.FileInfo, _ int) bool {
		return !info.IsDir() && strings.HasSuffix(info.Name(), "_test.rego")
	})
	if err != nil {
		return nil, err
	}
	if len(res.Modules) == 0 {
		return nil, fmt.Errorf("%s holds no Rego module", dir)
	}
	parsed := make(map[string]*ast.Module, len(res.Modules))
	raw := make(map[string]string, len(res.Modules))
	for name, f := range res.Modules {
		parsed[name], raw[name] = f.Parsed, string(f.Raw)
	}
	return compileParsed(ctx, parsed, raw, res.Documents, query, dir)
}

// WatchDir loads dir now and again whenever a file under it changes (it
// polls every interval). A policy that fails to load is logged with OPA's
// error and the policy in force stays.
func (e *Engine) WatchDir(ctx context.Context, dir, query string, interval time.Duration) error {
	last := ""
	if e.Current().Source == dir { // loaded at start: watch for changes from here
		last, _ = fingerprint(dir)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		fp, err := fingerprint(dir)
		if err != nil {
			e.log.Error("authz: cannot read policy dir; the policy in force stays", "dir", dir, "err", err)
		} else if fp != last {
			last = fp
			if p, err := LoadDir(ctx, dir, query); err != nil {
				e.log.Error("authz: policy rejected; the policy in force stays", "dir", dir, "err", err,
					"in_force", e.Current().Source, "hash", e.Current().Hash[:12])
			} else {
				e.Use(p)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// fingerprint summarises the names, sizes and times of the files under dir.
func fingerprint(dir string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %d %d\n", path, info.Size(), info.ModTime().UnixNano())
		return nil
	})
	if err == nil {
		_, err = os.Stat(dir)
	}
	return hex.EncodeToString(h.Sum(nil)), err
}
