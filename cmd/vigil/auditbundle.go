package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/raft"
)

// An evidence bundle (node/evidence.go) is a hash-chained file like a
// decision log whose first line names the incident and whose last line is
// a seal, signed with the sealing member's audit key over the hash of the
// line before it. verifyBundle checks the chain and the seal, and with a
// server also that the bundle's head is the one the incident recorded and
// that the seal's key is the sealing member's registered audit key.

type bundleHeader struct {
	Bundle   string `json:"evidence_bundle"`
	Incident string `json:"incident"`
	Subject  string `json:"subject"`
	SealedBy string `json:"sealed_by"`
	Since    string `json:"since"`
	Until    string `json:"until"`
}

type bundleSeal struct {
	Prev string `json:"prev"`
	Seal *struct {
		Incident  string   `json:"incident"`
		Entries   int      `json:"entries"`
		Members   []string `json:"members"`
		Key       string   `json:"key"`
		Signature string   `json:"signature"`
	} `json:"seal"`
}

// isBundle reports whether the first line of data opens an evidence bundle.
func isBundle(first []byte) bool {
	return bytes.Contains(first, []byte(`"evidence_bundle":"vigil/v1"`))
}

func verifyBundle(ctx context.Context, out io.Writer, c *clientFlags, data []byte, file string) error {
	rep, err := authz.VerifyDecisionLog(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	var head bundleHeader
	if err := json.Unmarshal(lines[0], &head); err != nil || head.Incident == "" {
		return fmt.Errorf("%s: the first line is not an evidence bundle header", file)
	}
	var seal bundleSeal
	if len(lines) < 2 || json.Unmarshal(lines[len(lines)-1], &seal) != nil || seal.Seal == nil {
		return fmt.Errorf("%s: the bundle has no seal on its last line: it was cut short", file)
	}
	s := seal.Seal
	key, err := base64.StdEncoding.DecodeString(s.Key)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return fmt.Errorf("%s: the seal's key is not an ed25519 public key", file)
	}
	sig, err := base64.StdEncoding.DecodeString(s.Signature)
	if err != nil || s.Incident != head.Incident ||
		!ed25519.Verify(key, []byte("vigil evidence bundle v1\n"+s.Incident+"\n"+seal.Prev), sig) {
		return fmt.Errorf("%s: the seal's signature does not verify: the bundle is not the one member %s sealed", file, head.SealedBy)
	}
	if got := len(lines) - 2; got != s.Entries+countMissing(lines) {
		return fmt.Errorf("%s: the seal counts %d entries, the bundle holds %d", file, s.Entries, got)
	}
	fmt.Fprintf(out, "%s: evidence bundle of incident %s (%s, %s to %s), %d entries from %s, chain intact, seal verifies, head %s\n",
		file, head.Incident, head.Subject, head.Since, head.Until, s.Entries, strings.Join(s.Members, ", "), rep.Head)
	if c.server == "" {
		fmt.Fprintf(out, "%s: offline: the seal's key is the bundle's own and is not checked against member %s's audit key, nor the head against the incident: use --server (or compare the head with vigil incident show %s)\n",
			file, head.SealedBy, head.Incident)
		return nil
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	inc, err := cl.Incident(ctx, head.Incident)
	if err != nil {
		return fmt.Errorf("incident %s: %w", head.Incident, err)
	}
	recorded := false
	for _, a := range inc.Actions {
		if a.Name == "evidence" && strings.Contains(a.Detail, "sha256:"+rep.Head) {
			recorded = true
		}
	}
	if !recorded {
		return fmt.Errorf("%s: head %s is not the one incident %s recorded: the bundle was altered or replaced", file, rep.Head, head.Incident)
	}
	cps, err := cl.Checkpoints(ctx, head.SealedBy)
	if err != nil {
		return fmt.Errorf("audit key of member %s: %w", head.SealedBy, err)
	}
	if k, err := raft.ParseAuditKey(cps.AuditKey); err != nil || !bytes.Equal(k, key) {
		return fmt.Errorf("%s: the seal's key is not member %s's audit key", file, head.SealedBy)
	}
	fmt.Fprintf(out, "%s: the head is the one incident %s recorded, sealed with member %s's audit key\n", file, head.Incident, head.SealedBy)
	return nil
}

// countMissing counts the lines of members that could not answer.
func countMissing(lines [][]byte) int {
	n := 0
	for _, l := range lines {
		if bytes.Contains(l, []byte(`,"source":"missing",`)) {
			n++
		}
	}
	return n
}
