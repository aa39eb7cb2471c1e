package node

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sync"
	"time"

	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/raft"
)

// DefaultCheckpointInterval is how often a member checkpoints the head of
// its decision log into the replicated state unless told otherwise.
const DefaultCheckpointInterval = 5 * time.Second

// finalCheckpointTimeout bounds the checkpoint a member makes as it stops.
const finalCheckpointTimeout = 3 * time.Second

// loadAuditKey reads the member's ed25519 audit key (PKCS #8 PEM, mode
// 0600), creating it on first start. Its public half is registered with
// the member; it signs the member's decision-log checkpoints.
func loadAuditKey(path string) (ed25519.PrivateKey, error) {
	data, err := readSecret(path)
	if errors.Is(err, fs.ErrNotExist) {
		_, priv, gerr := ed25519.GenerateKey(rand.Reader)
		if gerr != nil {
			return nil, fmt.Errorf("audit key: %w", gerr)
		}
		der, gerr := x509.MarshalPKCS8PrivateKey(priv)
		if gerr != nil {
			return nil, fmt.Errorf("audit key: %w", gerr)
		}
		if gerr := writeSecret(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); gerr != nil {
			return nil, fmt.Errorf("create audit key: %w", gerr)
		}
		data, err = readSecret(path)
	}
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("audit key %s holds no PEM \"PRIVATE KEY\" block", path)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("audit key %s: %w", path, err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("audit key %s is a %T, not an ed25519 key", path, key)
	}
	return priv, nil
}

// checkpointer anchors the member's decision log: every interval, when the
// log's head has moved, and once more when the member stops, it signs the
// head and has the cluster record it (raft.Store.Checkpoint), directly when
// this member leads and through the leader's API otherwise. Failures are
// logged once per kind and never stop the member.
type checkpointer struct {
	n        *Node
	log      *authz.DecisionLog
	key      ed25519.PrivateKey
	pub      string // raft.EncodeAuditKey of key's public half
	interval time.Duration

	mu       sync.Mutex
	last     *raft.SignedCheckpoint // the last one recorded, nil before
	lastErr  string
	loggedAs string // normalized lastErr, to log each kind of failure once
}

// run checkpoints every interval until ctx ends.
func (c *checkpointer) run(ctx context.Context) error {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			c.checkpoint(ctx)
		}
	}
}

// final makes the checkpoint of the head the stopped decision log left,
// bounded by finalCheckpointTimeout; Node.Run calls it after every part
// (the decision log's writer among them) has returned.
func (c *checkpointer) final() {
	ctx, cancel := context.WithTimeout(context.Background(), finalCheckpointTimeout)
	defer cancel()
	c.checkpoint(ctx)
}

// checkpoint records the head if it moved since the last recorded one.
func (c *checkpointer) checkpoint(ctx context.Context) {
	seq, hash := c.log.Head()
	if seq == 0 {
		return // nothing written yet
	}
	id := c.n.cfg.ID
	if m, ok := c.n.store.Member(id); !ok || m.AuditKey != c.pub {
		return // not registered with this key yet: register will be
	}
	c.mu.Lock()
	last := c.last
	c.mu.Unlock()
	if last == nil {
		// After a restart: what the cluster already holds need not be sent again.
		if cps := c.n.store.Checkpoints(id); len(cps) > 0 && cps[len(cps)-1].AuditKey == c.pub {
			last = &cps[len(cps)-1].SignedCheckpoint
		}
	}
	if last != nil && last.Seq == seq && last.Hash == hash {
		return
	}
	cp := raft.SignedCheckpoint{Node: id, Seq: seq, Hash: hash, Time: c.n.cfg.Clock().UTC()}
	raft.SignCheckpoint(c.key, &cp)
	err := c.submit(ctx, cp)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.lastErr = err.Error()
		if kind := errorKind(c.lastErr); kind != c.loggedAs {
			c.loggedAs = kind
			c.n.cfg.Logger.Warn("decision log checkpoint not recorded; retrying", "seq", seq, "err", err)
		}
		return
	}
	if c.lastErr != "" {
		c.n.cfg.Logger.Info("decision log checkpoints are recorded again", "seq", seq)
	}
	c.last, c.lastErr, c.loggedAs = &cp, "", ""
}

// submit proposes cp through the leader.
func (c *checkpointer) submit(ctx context.Context, cp raft.SignedCheckpoint) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if c.n.store.IsLeader() {
		_, err := c.n.store.Checkpoint(ctx, cp)
		return err
	}
	id, _ := c.n.store.Leader()
	m, ok := c.n.store.Member(id)
	if id == "" || !ok || m.APIAddr == "" {
		return errors.New("no leader known")
	}
	_, err := c.n.conn.Client(m.APIAddr, c.n.peer).SubmitCheckpoint(ctx, cp)
	return err
}

var numbers = regexp.MustCompile(`[0-9a-f]{16,}|[0-9]+`)

// errorKind is an error message without its numbers and hashes, which
// change with every attempt.
func errorKind(msg string) string { return numbers.ReplaceAllString(msg, "#") }

// status describes the member's parts for GET /v1/node: the authorizer's,
// under "audit" its decision-log checkpoints, and under "disk" its data
// dir's free space (disk.go).
func (n *Node) status() any {
	st, ok := n.authz.status().(map[string]any)
	if !ok {
		st = map[string]any{"authz": n.authz.status()}
	}
	st["audit"] = n.audit.status()
	st["quorum"] = n.quorum.status()
	st["disk"] = n.disk.status()
	if n.monitor != nil {
		st["monitor"] = n.monitor.Status()
	}
	return st
}

// status is the checkpointer for GET /v1/node.
func (c *checkpointer) status() map[string]any {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]any{"auditKey": c.pub, "interval": c.interval.String()}
	if c.last != nil {
		out["lastCheckpoint"] = *c.last
	}
	if c.lastErr != "" {
		out["error"] = c.lastErr
	}
	return out
}
