package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/raft"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Check the authorizer's decision log"}
	cmd.AddCommand(newAuditVerifyCmd())
	return cmd
}

func newAuditVerifyCmd() *cobra.Command {
	var c clientFlags
	var nodeID string
	cmd := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check the hash chain of a decision log, and with --server the cluster's checkpoints of it",
		Long: `Check the hash chain of a decision log file and print its head: the hash of
its last line. Every line vouches for the line before it, but nothing in the
file vouches for the last one, so a file cut short still chains.

With --server (or VIGIL_SERVER) the file is also checked against the
cluster's checkpoints of its member: every member records the head of its log
(seq and hash, signed with its audit key) in the replicated state every few
seconds and when it stops. The checkpoints are fetched from the member at
--server, each signature is verified here with the key it was recorded under,
and every checkpoint must be in the file: a log cut short or rolled back is
reported with how many entries are missing, a rewritten one with the seq
whose hash differs. The member is --node, else the "node" of the file's
first decision. Without --server and VIGIL_SERVER the check is offline.

Exits non-zero at the first edited, removed, reordered, inserted, invalid or
truncated line, and on any checkpoint the file does not match or whose
signature does not verify. A chain restart after a writer crashed mid-line
is reported but is not an error.

An incident's evidence bundle (vigil incident export) is recognised by its
first line: its chain and its seal (signed with the sealing member's audit
key) are checked, and with --server also that its head is the one the
incident recorded and that the key is that member's.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := args[0]
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			defer f.Close()
			out := cmd.OutOrStdout()
			if first, _ := bufio.NewReader(f).ReadSlice('\n'); isBundle(first) {
				data, err := os.ReadFile(file)
				if err != nil {
					return err
				}
				return verifyBundle(cmd.Context(), out, &c, data, file)
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			if c.server == "" {
				rep, err := authz.VerifyDecisionLog(f)
				if err != nil {
					return fmt.Errorf("%s: %w", file, err)
				}
				printVerified(out, file, rep)
				return nil
			}
			return verifyAgainstCluster(cmd.Context(), out, &c, f, file, nodeID)
		},
	}
	c.registerServer(cmd, "", "API address of any Vigil member (env VIGIL_SERVER): also check FILE against the cluster's checkpoints of its member (default: offline)", false)
	cmd.Flags().StringVar(&nodeID, "node", "", "with --server: the member whose log FILE is (default: the node of FILE's first decision)")
	return cmd
}

func printVerified(out io.Writer, file string, rep authz.VerifyReport) {
	for _, r := range rep.Restarts {
		fmt.Fprintf(out, "%s: line %d: chain restarted after a torn write (line %d, %d line(s) of torn bytes); decisions may be missing there\n",
			file, r.Line, r.TornLine, r.TornLines)
	}
	fmt.Fprintf(out, "%s: %d decisions, chain intact, head %s\n", file, rep.Entries, rep.Head)
}

// verifyAgainstCluster checks f's chain and the cluster's checkpoints of
// its member, whose signatures it verifies itself.
func verifyAgainstCluster(ctx context.Context, out io.Writer, c *clientFlags, f *os.File, file, nodeID string) error {
	if nodeID == "" {
		var err error
		if nodeID, err = logNode(f); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := cl.Checkpoints(ctx, nodeID)
	if err != nil {
		return fmt.Errorf("checkpoints of member %s: %w", nodeID, err)
	}
	cps, bad, earlierKey := checkedCheckpoints(resp, nodeID)
	for _, msg := range bad {
		fmt.Fprintf(out, "%s: %s\n", file, msg)
	}
	if earlierKey > 0 {
		// Not a problem by itself: a member whose data dir was replaced has
		// a new key, and its older checkpoints anchor the older log.
		fmt.Fprintf(out, "%s: %d checkpoint(s) were signed with an earlier audit key of member %s (its key or data dir was replaced)\n",
			file, earlierKey, nodeID)
	}
	rep, verr := authz.VerifyDecisionLogAgainst(f, cps)
	for _, p := range rep.CheckpointProblems {
		fmt.Fprintf(out, "%s: checkpoint seq %d: %s\n", file, p.Checkpoint.Seq, p.Detail)
	}
	if verr != nil {
		return fmt.Errorf("%s: %w", file, verr)
	}
	printVerified(out, file, rep)
	switch {
	case len(cps) == 0 && len(bad) == 0:
		fmt.Fprintf(out, "%s: the cluster holds no checkpoint of member %s: only the chain was checked\n", file, nodeID)
	default:
		fmt.Fprintf(out, "%s: %d checkpoint(s) of member %s checked (the latest at seq %d), %d problem(s)\n",
			file, rep.CheckpointsChecked, nodeID, latestCheckpointSeq(cps), len(rep.CheckpointProblems)+len(bad))
	}
	if n := len(rep.CheckpointProblems) + len(bad); n > 0 {
		return fmt.Errorf("%s: %d checkpoint problem(s): the file is not the log the cluster recorded for member %s", file, n, nodeID)
	}
	return nil
}

// checkedCheckpoints keeps the checkpoints of node whose signatures verify
// under the audit key they were recorded with, describes the others, and
// counts those recorded under another key than the member's current one.
func checkedCheckpoints(resp *api.CheckpointsResponse, node string) (cps []authz.Checkpoint, bad []string, earlierKey int) {
	for _, rc := range resp.Checkpoints {
		if rc.Node != node {
			bad = append(bad, fmt.Sprintf("checkpoint seq %d: the server answered with a checkpoint of member %q", rc.Seq, rc.Node))
			continue
		}
		if err := raft.VerifyCheckpoint(rc.AuditKey, rc.SignedCheckpoint); err != nil {
			bad = append(bad, fmt.Sprintf("checkpoint seq %d: %v; not used", rc.Seq, err))
			continue
		}
		if rc.AuditKey != resp.AuditKey {
			earlierKey++
		}
		cps = append(cps, authz.Checkpoint{Node: rc.Node, Seq: rc.Seq, Hash: rc.Hash, Time: rc.Time})
	}
	return cps, bad, earlierKey
}

func latestCheckpointSeq(cps []authz.Checkpoint) uint64 {
	var seq uint64
	for _, c := range cps {
		seq = max(seq, c.Seq)
	}
	return seq
}

// logNode is the member named by the first decision of a log that names
// one.
func logNode(r io.Reader) (string, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line this long is no decision; skip the rest of it.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			continue
		}
		var d struct {
			Node string `json:"node"`
		}
		if json.Unmarshal(line, &d) == nil && d.Node != "" {
			return d.Node, nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return "", errors.New("no decision names its member; pass --node")
			}
			return "", err
		}
	}
}
