package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-iot/vigil/raft"
	"github.com/vigil-iot/vigil/topology"
)

// DefaultAddr is where a member serves the API unless told otherwise.
const DefaultAddr = "127.0.0.1:7070"

// Client calls one member's API. Errors the server reports come back as
// *Error, with every validation problem in Errors.
type Client struct {
	base  string
	token string
	http  *http.Client
	// MinRevision, when set, makes reads wait (bounded, at the server) until
	// the member has applied that revision.
	MinRevision topology.Revision
}

// Connector makes clients that share keep-alive connections (the default
// transport keeps only two idle connections per host) and one TLS
// configuration for https members.
type Connector struct {
	http *http.Client
}

// NewConnector returns a Connector; tlsConf (nil: the system's roots)
// verifies members served over https.
func NewConnector(tlsConf *tls.Config) *Connector {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 64
	t.TLSClientConfig = tlsConf
	return &Connector{http: &http.Client{Transport: t}}
}

var defaultConnector = NewConnector(nil)

// Client returns a client for the member at addr ("host:port" or a URL).
func (c *Connector) Client(addr, token string) *Client {
	return &Client{base: baseURL(addr), token: token, http: &http.Client{Timeout: 10 * time.Minute, Transport: c.http.Transport}}
}

// NewClient returns a client for the member at addr ("host:port" or a URL)
// that verifies https members with the system's roots.
func NewClient(addr, token string) *Client { return defaultConnector.Client(addr, token) }

// ErrCleartext is returned instead of sending a bearer token over plain
// HTTP to anything but this machine.
var ErrCleartext = errors.New("refusing to send an API token in clear text")

// checkCleartext allows plain http only to loopback addresses.
func checkCleartext(base string) error {
	u, err := url.Parse(base)
	if err != nil {
		return err
	}
	if u.Scheme != "http" {
		return nil
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%w to %s: serve the API with TLS (--api-tls-cert) and use https://", ErrCleartext, u.Host)
}

// HostPort is addr without an http:// or https:// scheme.
func HostPort(addr string) string {
	return strings.TrimPrefix(strings.TrimPrefix(addr, "https://"), "http://")
}

func baseURL(addr string) string {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return strings.TrimSuffix(addr, "/")
	}
	return "http://" + addr
}

// Addr is the base URL the client calls.
func (c *Client) Addr() string { return c.base }

func (c *Client) do(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	if c.token != "" {
		if err := checkCleartext(c.base); err != nil {
			return err
		}
	}
	if c.MinRevision > 0 && method == http.MethodGet {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		path += sep + "min_revision=" + strconv.FormatUint(uint64(c.MinRevision), 10)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if _, raw := out.(*[]byte); raw {
		req.Header.Set("Accept", "application/yaml")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("vigil at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("vigil at %s: reading response: %w", c.base, err)
	}
	if resp.StatusCode >= 300 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Code, e.Message = CodeInternal, fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(data)))
		}
		return e
	}
	if out == nil {
		return nil
	}
	if b, ok := out.(*[]byte); ok {
		*b = data
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("vigil at %s: decoding response: %w", c.base, err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return c.do(ctx, method, path, "application/json", body, out)
}

// Topology returns the current document.
func (c *Client) Topology(ctx context.Context) (*TopologyResponse, error) {
	var out TopologyResponse
	return &out, c.do(ctx, http.MethodGet, "/v1/topology", "", nil, &out)
}

// TopologyYAML returns the current document as YAML, in document order.
func (c *Client) TopologyYAML(ctx context.Context) ([]byte, error) {
	var out []byte
	return out, c.do(ctx, http.MethodGet, "/v1/topology", "", nil, &out)
}

// ApplyTopology replaces the document with a YAML or JSON one.
func (c *Client) ApplyTopology(ctx context.Context, doc []byte) (topology.Revision, error) {
	var out WriteResponse
	err := c.do(ctx, http.MethodPut, "/v1/topology", "application/yaml", doc, &out)
	return out.Revision, err
}

func subjectPath(kind topology.Kind, name string) string {
	return "/v1/" + kind.String() + "s/" + url.PathEscape(name)
}

// Subject returns a device's or gateway's record and runtime state.
func (c *Client) Subject(ctx context.Context, kind topology.Kind, name string) (*Subject, error) {
	var out Subject
	return &out, c.do(ctx, http.MethodGet, subjectPath(kind, name), "", nil, &out)
}

// Quarantine cuts a device or gateway off everywhere.
func (c *Client) Quarantine(ctx context.Context, kind topology.Kind, name, reason string) (*Subject, error) {
	var out Subject
	return &out, c.send(ctx, http.MethodPost, subjectPath(kind, name)+"/quarantine", QuarantineRequest{Reason: reason}, &out)
}

// QuarantineLocal quarantines a device or gateway on this member alone, at
// once, even while it is cut off from its cluster; the member proposes it
// to the cluster when it can.
func (c *Client) QuarantineLocal(ctx context.Context, kind topology.Kind, name, reason string) (*LocalQuarantineResponse, error) {
	var out LocalQuarantineResponse
	return &out, c.send(ctx, http.MethodPost, subjectPath(kind, name)+"/quarantine?local=true", QuarantineRequest{Reason: reason}, &out)
}

// Release lifts a quarantine.
func (c *Client) Release(ctx context.Context, kind topology.Kind, name string) (*Subject, error) {
	var out Subject
	return &out, c.send(ctx, http.MethodPost, subjectPath(kind, name)+"/release", struct{}{}, &out)
}

// UpdateState applies a batch of runtime-state changes atomically.
func (c *Client) UpdateState(ctx context.Context, ops []raft.StateOp) (topology.Revision, error) {
	var out WriteResponse
	err := c.send(ctx, http.MethodPost, "/v1/state", StateRequest{Ops: ops}, &out)
	return out.Revision, err
}

// ClusterStatus reports every member and the revision it has applied.
func (c *Client) ClusterStatus(ctx context.Context) (*ClusterStatus, error) {
	var out ClusterStatus
	return &out, c.do(ctx, http.MethodGet, "/v1/cluster/status", "", nil, &out)
}

// Self reports the answering member's own raft status.
func (c *Client) Self(ctx context.Context) (*raft.Status, error) {
	var out raft.Status
	return &out, c.do(ctx, http.MethodGet, "/v1/cluster/self", "", nil, &out)
}

// Node reports the answering member's parts: readiness, the policy in
// force, decision-log counters.
func (c *Client) Node(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	return out, c.do(ctx, http.MethodGet, "/v1/node", "", nil, &out)
}

// Proxies reports the proxies connected to the member and their xDS state.
func (c *Client) Proxies(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	return out, c.do(ctx, http.MethodGet, "/v1/proxies", "", nil, &out)
}

// XDSDump returns, as YAML, the configuration the member serves the node
// with that node.id and node.cluster (empty for a gateway), as Envoy or,
// when proxyless, as a gRPC library.
func (c *Client) XDSDump(ctx context.Context, node, cluster string, proxyless bool) ([]byte, error) {
	q := url.Values{}
	if cluster != "" {
		q.Set("cluster", cluster)
	}
	if proxyless {
		q.Set("proxyless", "true")
	}
	path := "/v1/xds/" + url.PathEscape(node)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out []byte
	return out, c.do(ctx, http.MethodGet, path, "", nil, &out)
}

// Join asks the cluster to add m as a voter.
func (c *Client) Join(ctx context.Context, m raft.Member) error {
	return c.send(ctx, http.MethodPost, "/v1/cluster/join", m, nil)
}

// Snapshot makes the member the client talks to write a raft snapshot and
// compact its log.
func (c *Client) Snapshot(ctx context.Context) (topology.Revision, error) {
	var out WriteResponse
	err := c.send(ctx, http.MethodPost, "/v1/cluster/snapshot", struct{}{}, &out)
	return out.Revision, err
}

// RemoveMember removes a member from the cluster.
func (c *Client) RemoveMember(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/cluster/members/"+url.PathEscape(id), "", nil, nil)
}

// SubmitCheckpoint records a member's signed decision-log checkpoint; it
// needs the peer token.
func (c *Client) SubmitCheckpoint(ctx context.Context, cp raft.SignedCheckpoint) (topology.Revision, error) {
	var out WriteResponse
	err := c.send(ctx, http.MethodPost, "/v1/audit/checkpoints", cp, &out)
	return out.Revision, err
}

// Checkpoints returns the decision-log checkpoints the cluster recorded for
// a member, with the member's audit key.
func (c *Client) Checkpoints(ctx context.Context, node string) (*CheckpointsResponse, error) {
	var out CheckpointsResponse
	return &out, c.do(ctx, http.MethodGet, "/v1/audit/checkpoints?node="+url.QueryEscape(node), "", nil, &out)
}

// Health reports whether the member answers at all (no token needed).
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/healthz", "", nil, nil)
}

// ConsoleLink makes a one-time console login link at this member for the
// client's token; open Addr()+Path before ExpiresAt.
func (c *Client) ConsoleLink(ctx context.Context) (*ConsoleLinkResponse, error) {
	var out ConsoleLinkResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/console/links", "", nil, &out)
}
