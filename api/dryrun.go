package api

// The dry run of a topology document:
//
//	POST /v1/topology/dry-run[?max_lines=N&since=DURATION]
//
// The body is a candidate topology document (YAML or JSON, at most
// MaxDocumentBytes), checked exactly as PUT /v1/topology checks it: 422
// invalid_document with every problem, 400 bad_document on a syntax error.
// The member asked (it is not forwarded to the leader) re-decides the
// recent decisions of its own decision log against the candidate, with the
// policy, topology and runtime state it holds now, and answers a
// DryRunResult: what would flip, allow → deny and deny → allow, by flow,
// device and service. Nothing is applied and nothing is written.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// Bounds of a dry run.
const (
	// DefaultDryRunLines is how many of the most recent lines of the
	// decision log a dry run replays unless told otherwise (max_lines).
	DefaultDryRunLines = 100_000
	// MaxDryRunLines bounds max_lines.
	MaxDryRunLines = 1_000_000
	// dryRunDeadline bounds the replay (the document's decoding is bounded
	// by documentDeadline, as for PUT /v1/topology).
	dryRunDeadline = 2 * time.Minute
)

// DryRunner re-decides a member's recent decisions against a candidate
// topology. It must change nothing.
type DryRunner interface {
	// DryRun replays the member's decision log, bounded by opts, against
	// candidate. Member and Candidate of the result are filled in by the
	// API. An *Error it returns is the answer as it is.
	DryRun(ctx context.Context, candidate *topology.Index, opts DryRunOptions) (*DryRunResult, error)
}

// DryRunOptions bound what a dry run replays.
type DryRunOptions struct {
	// MaxLines is how many of the most recent lines of the log are
	// replayed (default DefaultDryRunLines, at most MaxDryRunLines).
	MaxLines int
	// Since, when positive, leaves out lines older than that.
	Since time.Duration
}

// DryRunResult answers POST /v1/topology/dry-run.
type DryRunResult struct {
	// Member is the member that answered, from its own decision log.
	Member string `json:"member"`
	// Applied is always false: a dry run changes nothing.
	Applied bool `json:"applied"`
	// Current is the member's topology the decisions are compared with,
	// Candidate the document sent.
	Current   DryRunDocument `json:"current"`
	Candidate DryRunDocument `json:"candidate"`
	// Log says which lines of the decision log were replayed.
	Log DryRunLog `json:"log"`
	// Report is the replay's report (authz.ReplayReport): totals, and the
	// flips by flow, device and service with example decision IDs.
	Report json.RawMessage `json:"report"`
}

// DryRunDocument summarises a topology document.
type DryRunDocument struct {
	// Revision and DocumentRevision are the member's, for the current
	// document; zero for the candidate and before any document.
	Revision         topology.Revision `json:"revision,omitempty"`
	DocumentRevision topology.Revision `json:"documentRevision,omitempty"`
	Zones            int               `json:"zones"`
	Gateways         int               `json:"gateways"`
	Devices          int               `json:"devices"`
	Services         int               `json:"services"`
	Flows            int               `json:"flows"`
}

// SummarizeDocument counts what ix holds.
func SummarizeDocument(ix *topology.Index) DryRunDocument {
	if ix == nil {
		return DryRunDocument{}
	}
	return DryRunDocument{Zones: ix.NumZones(), Gateways: ix.NumGateways(), Devices: ix.NumDevices(),
		Services: ix.NumServices(), Flows: ix.NumFlows()}
}

// DryRunLog says which part of a decision log a dry run read.
type DryRunLog struct {
	Path string `json:"path"`
	// Size is the file's size when it was read; lines appended later are
	// not replayed, nor is a last line still being written.
	Size int64 `json:"size"`
	// Start and End are the byte range of whole lines replayed.
	Start int64 `json:"start"`
	End   int64 `json:"end"`
	// Lines is how many lines were replayed (the report's totals count
	// them by what became of them).
	Lines int `json:"lines"`
	// FirstSeq, LastSeq, From and To are the seq and time of the first
	// and last line replayed, when they have them.
	FirstSeq uint64    `json:"firstSeq,omitempty"`
	LastSeq  uint64    `json:"lastSeq,omitempty"`
	From     time.Time `json:"from,omitzero"`
	To       time.Time `json:"to,omitzero"`
	// MaxLines and Since are the bounds applied (Since as the oldest time
	// replayed).
	MaxLines int       `json:"maxLines"`
	Since    time.Time `json:"since,omitzero"`
	// Older says why older lines of the file were not replayed: "" when
	// the whole file was, else "max_lines", "max_bytes" or "since".
	Older string `json:"older,omitempty"`
	// LeadingSkipped counts lines at the start of the range left out
	// because they were older than Since or not log entries (a torn write).
	LeadingSkipped int `json:"leadingSkipped,omitempty"`
}

func (s *Server) dryRunRoutes() {
	s.route("POST /v1/topology/dry-run", s.dryRun)
}

// parseDryRunOptions reads ?max_lines=N&since=DURATION.
func parseDryRunOptions(q url.Values) (DryRunOptions, error) {
	opts := DryRunOptions{MaxLines: DefaultDryRunLines}
	if v := q.Get("max_lines"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxDryRunLines {
			return opts, badRequest("max_lines %q: want a number from 1 to %d", v, MaxDryRunLines)
		}
		opts.MaxLines = n
	}
	if v := q.Get("since"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return opts, badRequest("since %q: want a positive duration such as 30m or 24h", v)
		}
		opts.Since = d
	}
	return opts, nil
}

// dryRun answers POST /v1/topology/dry-run on this member; it writes
// nothing to the store.
func (s *Server) dryRun(w http.ResponseWriter, r *http.Request) error {
	opts, err := parseDryRunOptions(r.URL.Query())
	if err != nil {
		return err
	}
	if s.cfg.DryRun == nil {
		return notFound("member %s serves no dry run", s.cfg.Store.ID())
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxDocumentBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeBadRequest, Message: err.Error()}
		}
		return badRequest("reading request body: %v", err)
	}
	ctx, cancel := context.WithTimeout(r.Context(), documentDeadline)
	defer cancel()
	ix, err := topology.Load(body)
	if err != nil {
		return err // 422 with every problem, or 400: as PUT /v1/topology
	}
	ctx, cancelRun := context.WithTimeout(ctx, dryRunDeadline)
	defer cancelRun()
	res, err := s.cfg.DryRun.DryRun(ctx, ix, opts)
	if err != nil {
		return err
	}
	res.Member, res.Applied, res.Candidate = s.cfg.Store.ID(), false, SummarizeDocument(ix)
	s.cfg.Logger.Info("api: topology dry run", "by", actorOf(r), "lines", res.Log.Lines,
		"candidate_flows", res.Candidate.Flows, "current_revision", res.Current.Revision)
	writeJSON(w, http.StatusOK, res)
	return nil
}

// DryRunTopology sends a candidate document (YAML or JSON) to the member's
// dry run, which re-decides that member's recent decisions against it and
// applies nothing.
func (c *Client) DryRunTopology(ctx context.Context, doc []byte, opts DryRunOptions) (*DryRunResult, error) {
	q := url.Values{}
	if opts.MaxLines > 0 {
		q.Set("max_lines", strconv.Itoa(opts.MaxLines))
	}
	if opts.Since > 0 {
		q.Set("since", opts.Since.String())
	}
	path := "/v1/topology/dry-run"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out DryRunResult
	if err := c.do(ctx, http.MethodPost, path, "application/yaml", doc, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
