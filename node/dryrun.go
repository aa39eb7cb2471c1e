package node

// The dry run of a topology document (POST /v1/topology/dry-run, vigil
// topology apply --dry-run): the member re-decides the recent decisions of
// its own decision log against a candidate document, with what it holds
// now: the policy its authorizer uses (a --policy-dir policy included), its
// current topology (to name the flows that allowed) and its replica's
// runtime state of each subject (quarantine, risk, attestation). It reads
// the log's last lines (logtail.go) and writes nothing.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"time"

	"github.com/vigil-iot/vigil/api"
	"github.com/vigil-iot/vigil/authz"
	"github.com/vigil-iot/vigil/topology"
)

const (
	// dryRunMaxBytes bounds how far back from the end of the decision log
	// a dry run reads, whatever the number of lines asked for.
	dryRunMaxBytes = 1 << 30
	// dryRunMaxGroups bounds the groups of each dimension of the report
	// (the rest are counted under "(other)").
	dryRunMaxGroups = 1000
)

// dryRun is the member's api.DryRunner.
type dryRun struct {
	n *Node
	// busy holds a token while a dry run runs: one at a time per member.
	busy chan struct{}
}

func (n *Node) dryRunner() api.DryRunner { return &dryRun{n: n, busy: make(chan struct{}, 1)} }

// DryRun implements api.DryRunner.
func (d *dryRun) DryRun(ctx context.Context, candidate *topology.Index, opts api.DryRunOptions) (*api.DryRunResult, error) {
	id := d.n.cfg.ID
	select {
	case d.busy <- struct{}{}:
		defer func() { <-d.busy }()
	default:
		return nil, &api.Error{Status: http.StatusServiceUnavailable, Code: api.CodeBusy,
			Message: fmt.Sprintf("a dry run is already running on member %s; retry when it ends", id)}
	}
	p := d.n.authz
	if p == nil || p.log == nil || p.cfg.DecisionLog == "" {
		return nil, &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound,
			Message: fmt.Sprintf("member %s keeps no decision log: there are no decisions to replay", id)}
	}
	if opts.MaxLines <= 0 {
		opts.MaxLines = api.DefaultDryRunLines
	}
	opts.MaxLines = min(opts.MaxLines, api.MaxDryRunLines)
	now := d.n.cfg.Clock()
	// One snapshot for the whole run: the current topology and the state
	// of every subject as of the same revision.
	snap := d.n.store.Current()
	res := &api.DryRunResult{Log: api.DryRunLog{Path: p.cfg.DecisionLog, MaxLines: opts.MaxLines}}
	var current *topology.Index
	if snap.HasDocument() {
		current = snap.Index()
		res.Current = api.SummarizeDocument(current)
	}
	res.Current.Revision, res.Current.DocumentRevision = snap.Revision(), snap.DocumentRevision()
	var since time.Time
	if opts.Since > 0 {
		since = now.Add(-opts.Since)
		res.Log.Since = since.UTC()
	}

	f, err := os.Open(p.cfg.DecisionLog)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &api.Error{Status: http.StatusNotFound, Code: api.CodeNotFound,
			Message: fmt.Sprintf("member %s has no decision log at %s", id, p.cfg.DecisionLog)}
	}
	if err != nil {
		return nil, fmt.Errorf("decision log: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("decision log: %w", err)
	}
	tail, err := findLogTail(f, info.Size(), opts.MaxLines, dryRunMaxBytes)
	if err != nil {
		return nil, fmt.Errorf("decision log %s: %w", p.cfg.DecisionLog, err)
	}
	r, start, err := tailReader(f, tail, since)
	if err != nil {
		return nil, fmt.Errorf("decision log %s: %w", p.cfg.DecisionLog, err)
	}
	lg := &res.Log
	lg.Size, lg.Start, lg.End = tail.size, start.off, tail.end
	lg.Lines = tail.lines - start.old - start.nonEntries
	lg.LeadingSkipped = start.old + start.nonEntries
	lg.Older = tail.older
	if start.old > 0 {
		lg.Older = "since"
	}
	if lg.Lines > 0 {
		lg.FirstSeq, lg.From = start.head.seq, start.head.time
		if last, ok := readLineHead(f, tail.lastStart, tail.end); ok {
			lg.LastSeq, lg.To = last.seq, last.time
		}
	}

	rep, err := authz.Replay(ctx, r, authz.ReplayConfig{
		Candidate: candidate, Current: current, Policy: p.engine.Current(),
		StateOf: func(_ context.Context, s topology.Subject) (*topology.SubjectState, error) {
			return snap.SubjectState(s), nil
		},
		Now: now, Node: id, MaxGroups: dryRunMaxGroups,
	})
	if errors.Is(err, authz.ErrNotDecisionLog) {
		return nil, &api.Error{Status: http.StatusInternalServerError, Code: api.CodeInternal,
			Message: fmt.Sprintf("member %s: decision log %s: %v", id, p.cfg.DecisionLog, err)}
	}
	if err != nil {
		return nil, err
	}
	if res.Report, err = json.Marshal(rep); err != nil {
		return nil, err
	}
	return res, nil
}

// readLineHead reads the seq and time of the line at off (before end).
func readLineHead(r io.ReaderAt, off, end int64) (lineHead, bool) {
	if off >= end {
		return lineHead{}, false
	}
	b := make([]byte, min(end-off, headBytes))
	n, err := r.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return lineHead{}, false
	}
	return parseLineHead(b[:n])
}
