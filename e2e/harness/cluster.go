package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vigil-iot/vigil/api"
)

// TB is the part of testing.TB that Start uses.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	Failed() bool
	TempDir() string
}

// Options configure a Cluster.
type Options struct {
	// Binary is the vigil binary (see Build). Required.
	Binary string
	// Members is the cluster size; default 3.
	Members int
	// Dir holds every member's data dir and log; default a new temporary
	// directory that Close removes.
	Dir string
	// LogLevel is each member's --log-level; default "warn".
	LogLevel string
	// Args are extra flags given to every member.
	Args []string
	// Timeout bounds each wait (a member's /healthz, the cluster forming, a
	// leader being elected, a stop); default 30s.
	Timeout time.Duration
	// Faults, when set, puts a proxy of this FaultNet in front of each
	// member's raft and API listeners and makes members advertise the
	// proxies, so that all traffic between members (raft, forwarded writes,
	// joins) passes through it and a test can cut, delay, drop and reset
	// it per pair of member IDs. Tests' own clients (Client) use the real
	// addresses and are not subject to faults. The cluster names sources
	// by PID (PIDIdentifier) and its Close closes the FaultNet.
	Faults *FaultNet
}

// Cluster is a set of `vigil serve` processes on 127.0.0.1. Member i (from
// 0) has ID "n<i+1>"; member 0 founds the cluster and the others join it
// with its cluster key and token file.
type Cluster struct {
	opts    Options
	tempDir bool
	token   string
	members []*Member
}

// Member is one `vigil serve` process of a Cluster.
type Member struct {
	ID        string
	DataDir   string
	APIAddr   string
	RaftAddr  string
	AuthzAddr string
	XDSAddr   string
	LogPath   string
	// RaftAdvertise and APIAdvertise are the addresses other members dial:
	// the member's proxies with Options.Faults, else RaftAddr and APIAddr.
	RaftAdvertise string
	APIAdvertise  string

	args   []string
	mu     sync.Mutex
	proc   *Process
	paused bool // proc is stopped by Pause
	starts int
}

// Start starts a cluster for a test: it fails the test if the cluster does
// not form, dumps the tail of every member's log if the test fails, and
// kills every member when the test ends.
func Start(t TB, opts Options) *Cluster {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	c, err := New(opts)
	if c != nil {
		t.Cleanup(func() {
			if f := opts.Faults; f != nil {
				// A connection whose dialing member was not recognised
				// crossed the proxies unfaulted: the test's faults may
				// not have applied, and its result proves nothing.
				for p, ps := range f.Stats().Pairs {
					if p.From == ClientEndpoint && ps.Accepted > 0 {
						t.Errorf("the fault network could not name the source of %d connection(s) to %s, so no fault applied to them", ps.Accepted, p.To)
					}
				}
			}
			if t.Failed() {
				t.Logf("%s", c.LogTails(60))
			}
			c.Close()
		})
	}
	if err != nil {
		t.Fatalf("start a vigil cluster: %v", err)
	}
	return c
}

// New starts a cluster and waits until every member is a voter and a leader
// is elected. On error the returned cluster (if not nil) still needs Close,
// and its logs say what went wrong.
func New(opts Options) (*Cluster, error) {
	if opts.Binary == "" {
		return nil, errors.New("harness: Options.Binary is required (see Build)")
	}
	if opts.Members <= 0 {
		opts.Members = 3
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "warn"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	c := &Cluster{opts: opts}
	if opts.Faults != nil {
		// By PID, looked up per connection: a restarted member keeps its
		// name, and the harness's own clients are "client".
		opts.Faults.SetIdentify(PIDIdentifier(c.pids))
	}
	if c.opts.Dir == "" {
		dir, err := os.MkdirTemp("", "vigil-e2e-")
		if err != nil {
			return nil, err
		}
		c.opts.Dir, c.tempDir = dir, true
	}
	for i := range opts.Members {
		m := &Member{ID: fmt.Sprintf("n%d", i+1)}
		m.DataDir = filepath.Join(c.opts.Dir, m.ID)
		m.LogPath = filepath.Join(c.opts.Dir, m.ID+".log")
		var err error
		if m.APIAddr, err = FreeAddr(); err != nil {
			return c, err
		}
		if m.RaftAddr, err = FreeAddr(); err != nil {
			return c, err
		}
		if m.AuthzAddr, err = FreeAddr(); err != nil {
			return c, err
		}
		if m.XDSAddr, err = FreeAddr(); err != nil {
			return c, err
		}
		m.args = []string{"serve", "--node-id", m.ID, "--data-dir", m.DataDir,
			"--api-addr", m.APIAddr, "--raft-addr", m.RaftAddr, "--authz-addr", m.AuthzAddr, "--xds-addr", m.XDSAddr,
			"--log-level", opts.LogLevel}
		m.RaftAdvertise, m.APIAdvertise = m.RaftAddr, m.APIAddr
		if f := opts.Faults; f != nil {
			if m.RaftAdvertise, err = f.Proxy(m.ID, m.RaftAddr); err != nil {
				return c, err
			}
			if m.APIAdvertise, err = f.Proxy(m.ID, m.APIAddr); err != nil {
				return c, err
			}
			m.args = append(m.args, "--raft-advertise", m.RaftAdvertise, "--api-advertise", m.APIAdvertise)
		}
		if i > 0 {
			first := c.members[0]
			m.args = append(m.args, "--join", first.APIAdvertise,
				"--cluster-key-file", filepath.Join(first.DataDir, "cluster.key"),
				"--token-file", c.TokenFile())
		}
		m.args = append(m.args, opts.Args...)
		c.members = append(c.members, m)
	}
	for i := range c.members {
		if err := c.Restart(i); err != nil {
			return c, err
		}
		if i == 0 {
			data, err := os.ReadFile(c.TokenFile())
			if err != nil {
				return c, fmt.Errorf("founding member's token file: %w", err)
			}
			if c.token, err = api.FirstToken(data); err != nil {
				return c, fmt.Errorf("founding member's token file %s: %w", c.TokenFile(), err)
			}
		}
	}
	return c, c.WaitReady()
}

// Size is the number of members, running or not.
func (c *Cluster) Size() int { return len(c.members) }

// Member returns member i (from 0).
func (c *Cluster) Member(i int) *Member { return c.members[i] }

// pids maps the running members' IDs to their PIDs.
func (c *Cluster) pids() map[string]int {
	out := make(map[string]int, len(c.members))
	for i, m := range c.members {
		if pid := c.PID(i); pid != 0 {
			out[m.ID] = pid
		}
	}
	return out
}

// TokenFile is the operators' token file the founding member wrote.
func (c *Cluster) TokenFile() string { return filepath.Join(c.members[0].DataDir, "api-tokens") }

// Token is the operator token from TokenFile.
func (c *Cluster) Token() string { return c.token }

// Client returns a new API client for member i, holding the operator token.
func (c *Cluster) Client(i int) *api.Client { return api.NewClient(c.members[i].APIAddr, c.token) }

// Running reports whether member i's process is running.
func (c *Cluster) Running(i int) bool {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc != nil && !m.proc.Exited()
}

// RunningMembers lists the indexes of the members whose process runs.
func (c *Cluster) RunningMembers() []int {
	var out []int
	for i := range c.members {
		if c.Running(i) {
			out = append(out, i)
		}
	}
	return out
}

// PID is member i's process ID, 0 when it is not running.
func (c *Cluster) PID(i int) int {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil || m.proc.Exited() {
		return 0
	}
	return m.proc.PID()
}

// Restart starts member i again with the same data dir and flags (or for
// the first time) and waits for its /healthz. The member must not be
// running.
func (c *Cluster) Restart(i int) error {
	m := c.members[i]
	m.mu.Lock()
	if m.proc != nil && !m.proc.Exited() {
		m.mu.Unlock()
		return fmt.Errorf("restart %s: it is still running (pid %d)", m.ID, m.proc.PID())
	}
	m.starts++
	log, err := os.OpenFile(m.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("start %s: log file: %w", m.ID, err)
	}
	fmt.Fprintf(log, "=== harness %s: start #%d of %s: vigil %s\n", time.Now().Format(time.RFC3339Nano), m.starts, m.ID, strings.Join(m.args, " "))
	cmd := exec.Command(c.opts.Binary, m.args...)
	cmd.Env = Env()
	cmd.Stdout, cmd.Stderr = log, log
	p, err := StartProcess(cmd)
	if err != nil {
		log.Close()
		m.mu.Unlock()
		return fmt.Errorf("start %s: %w", m.ID, err)
	}
	m.proc, m.paused = p, false
	m.mu.Unlock()
	go func() {
		<-p.Done()
		fmt.Fprintf(log, "=== harness %s: %s (pid %d) exited: %v\n", time.Now().Format(time.RFC3339Nano), m.ID, p.PID(), p.ExitError())
		log.Close()
	}()
	return c.waitHealthy(i, p)
}

func (c *Cluster) waitHealthy(i int, p *Process) error {
	m := c.members[i]
	cl := c.Client(i)
	deadline := time.Now().Add(c.opts.Timeout)
	var last error
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("%s exited while starting (%v); its log %s ends:\n%s", m.ID, p.ExitError(), m.LogPath, tail(m.LogPath, 30))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		last = cl.Health(ctx)
		cancel()
		if last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("waited %v for %s's /healthz at %s: %v", c.opts.Timeout, m.ID, m.APIAddr, last)
}

// Kill sends SIGKILL to member i's process and waits for it to be gone. A
// paused member is killed too: SIGKILL ends a stopped process.
func (c *Cluster) Kill(i int) error {
	m := c.members[i]
	m.mu.Lock()
	p := m.proc
	m.mu.Unlock()
	if p == nil {
		return nil
	}
	if err := p.Kill(); err != nil {
		return fmt.Errorf("kill %s: %w", m.ID, err)
	}
	m.mu.Lock()
	if m.proc == p {
		m.paused = false
	}
	m.mu.Unlock()
	return nil
}

// Pause stops member i's process with SIGSTOP, as a long GC pause or a
// frozen VM would: its sockets stay open but it answers nothing. While
// paused, a member counts as not running for WaitLeader, Leader and
// Followers (RunningMembers still lists it), and WaitReady fails.
func (c *Cluster) Pause(i int) error {
	return c.pause(i, true)
}

// Resume continues member i after Pause, with SIGCONT.
func (c *Cluster) Resume(i int) error {
	return c.pause(i, false)
}

// Paused reports whether member i is paused.
func (c *Cluster) Paused(i int) bool {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.paused && m.proc != nil && !m.proc.Exited()
}

func (c *Cluster) pause(i int, stop bool) error {
	m := c.members[i]
	verb := "resume"
	if stop {
		verb = "pause"
	}
	stopSig, contSig, err := pauseSignals()
	if err != nil {
		return fmt.Errorf("%s %s: %w", verb, m.ID, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil || m.proc.Exited() {
		return fmt.Errorf("%s %s: it is not running", verb, m.ID)
	}
	sig := contSig
	if stop {
		sig = stopSig
	}
	if err := m.proc.Signal(sig); err != nil {
		return fmt.Errorf("%s %s: %w", verb, m.ID, err)
	}
	m.paused = stop
	return nil
}

// Stop sends SIGTERM to member i and waits for it to exit. It is an error
// if the member does not exit within the timeout (it is then killed) or
// exits with a non-zero status.
func (c *Cluster) Stop(i int) error {
	m := c.members[i]
	if c.Paused(i) {
		// A stopped process would only act on SIGTERM once continued.
		if err := c.Resume(i); err != nil {
			return fmt.Errorf("stop %s: %w", m.ID, err)
		}
	}
	m.mu.Lock()
	p := m.proc
	m.mu.Unlock()
	if p == nil || p.Exited() {
		return nil
	}
	code, err := p.Stop(c.opts.Timeout)
	if err != nil {
		return fmt.Errorf("stop %s: %w", m.ID, err)
	}
	if code != 0 {
		return fmt.Errorf("stop %s: exit status %d after SIGTERM", m.ID, code)
	}
	return nil
}

// Close kills every member still running (paused ones too), closes
// Options.Faults, and removes the cluster's directory if the cluster
// created it.
func (c *Cluster) Close() error {
	var errs []error
	for i := range c.members {
		errs = append(errs, c.Kill(i))
	}
	if c.opts.Faults != nil {
		errs = append(errs, c.opts.Faults.Close())
	}
	if c.tempDir {
		errs = append(errs, os.RemoveAll(c.opts.Dir))
	}
	return errors.Join(errs...)
}

// Status asks member i for the cluster status (bounded).
func (c *Cluster) Status(i int) (*api.ClusterStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return c.Client(i).ClusterStatus(ctx)
}

// WaitReady waits until every member runs, every running member reports all
// of them as registered voters, and they agree on a leader.
func (c *Cluster) WaitReady() error {
	_, err := c.waitView("every member to be a registered voter with an agreed leader", func(st *api.ClusterStatus) error {
		if len(st.Members) != len(c.members) {
			return fmt.Errorf("%d members in the configuration, want %d", len(st.Members), len(c.members))
		}
		for _, ms := range st.Members {
			want := c.byID(ms.ID)
			switch {
			case want == nil:
				return fmt.Errorf("unknown member %q", ms.ID)
			case !ms.Voter:
				return fmt.Errorf("%s is not a voter", ms.ID)
			case ms.APIAddr != want.APIAdvertise:
				return fmt.Errorf("%s registered API address %q, want %q", ms.ID, ms.APIAddr, want.APIAdvertise)
			}
		}
		return nil
	}, true)
	return err
}

// WaitLeader waits until every running member reports the same leader, and
// that leader is running; it returns the leader's index.
func (c *Cluster) WaitLeader() (int, error) {
	return c.waitView("a leader that every running member agrees on", nil, false)
}

// Leader is WaitLeader: the index of the current leader.
func (c *Cluster) Leader() (int, error) { return c.WaitLeader() }

// Followers lists the running members other than the leader.
func (c *Cluster) Followers() ([]int, error) {
	l, err := c.WaitLeader()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(c.activeMembers(), func(i int) bool { return i == l }), nil
}

// waitView polls every running member's /v1/cluster/status until they
// agree on a running leader and check accepts each member's view.
func (c *Cluster) waitView(what string, check func(*api.ClusterStatus) error, allRunning bool) (int, error) {
	deadline := time.Now().Add(c.opts.Timeout)
	var last error
	for time.Now().Before(deadline) {
		var leader int
		if leader, last = c.viewOnce(check, allRunning); last == nil {
			return leader, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return -1, fmt.Errorf("waited %v for %s: %v", c.opts.Timeout, what, last)
}

// activeMembers lists the members that run and are not paused: those that
// answer.
func (c *Cluster) activeMembers() []int {
	return slices.DeleteFunc(c.RunningMembers(), c.Paused)
}

func (c *Cluster) viewOnce(check func(*api.ClusterStatus) error, allRunning bool) (int, error) {
	running := c.activeMembers()
	if len(running) == 0 {
		return -1, errors.New("no member is running (and not paused)")
	}
	if allRunning && len(running) != len(c.members) {
		return -1, fmt.Errorf("only members %v of %d are running and not paused", running, len(c.members))
	}
	leaderID := ""
	for _, i := range running {
		st, err := c.Status(i)
		if err != nil {
			return -1, fmt.Errorf("%s: %w", c.members[i].ID, err)
		}
		if st.LeaderID == "" {
			return -1, fmt.Errorf("%s knows no leader", c.members[i].ID)
		}
		if leaderID != "" && st.LeaderID != leaderID {
			return -1, fmt.Errorf("%s says %s leads, another member says %s", c.members[i].ID, st.LeaderID, leaderID)
		}
		leaderID = st.LeaderID
		if check != nil {
			if err := check(st); err != nil {
				return -1, fmt.Errorf("as %s sees it: %w", c.members[i].ID, err)
			}
		}
	}
	l := c.index(leaderID)
	if l < 0 || !c.Running(l) || c.Paused(l) {
		return -1, fmt.Errorf("leader %q is not a running, unpaused member", leaderID)
	}
	return l, nil
}

func (c *Cluster) index(id string) int {
	return slices.IndexFunc(c.members, func(m *Member) bool { return m.ID == id })
}

func (c *Cluster) byID(id string) *Member {
	if i := c.index(id); i >= 0 {
		return c.members[i]
	}
	return nil
}

// LogTails returns the last n lines of every member's log, for a failure
// report.
func (c *Cluster) LogTails(n int) string {
	var b strings.Builder
	for _, m := range c.members {
		fmt.Fprintf(&b, "\n----- last %d lines of %s (%s) -----\n%s", n, m.ID, m.LogPath, tail(m.LogPath, n))
	}
	return b.String()
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)\n", err)
	}
	lines := strings.SplitAfter(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "") + "\n"
}
