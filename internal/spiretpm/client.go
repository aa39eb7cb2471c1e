package spiretpm

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
	"strings"
	"time"
)

// Client calls Vigil's API for the server plugin: a bearer token (a line
// of the members' --spire-tpm-token-file), the members' addresses tried
// in turn.
type Client struct {
	servers []string
	token   string
	http    *http.Client
}

// NewClient checks the addresses: https, or http to loopback only (the
// token must never cross a network in the clear).
func NewClient(servers []string, token string, tlsConfig *tls.Config, timeout time.Duration) (*Client, error) {
	if len(servers) == 0 {
		return nil, errors.New("no Vigil servers: give the members' API addresses")
	}
	if token == "" {
		return nil, errors.New("no token")
	}
	c := &Client{token: token}
	for _, s := range servers {
		if !strings.Contains(s, "://") {
			s = "https://" + s
		}
		u, err := url.Parse(s)
		if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return nil, fmt.Errorf("server %q is not an address such as https://vigil-1.example:7070", s)
		}
		switch u.Scheme {
		case "https":
		case "http":
			if ip := net.ParseIP(u.Hostname()); u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
				return nil, fmt.Errorf("server %s: http only to loopback; use https so the token is not sent in the clear", s)
			}
		default:
			return nil, fmt.Errorf("server %s: scheme must be https (or http to loopback)", s)
		}
		c.servers = append(c.servers, u.Scheme+"://"+u.Host)
	}
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConfig
	tr.Proxy = nil
	c.http = &http.Client{Transport: tr, Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return c, nil
}

// Challenge asks for a nonce.
func (c *Client) Challenge(ctx context.Context, req ChallengeRequest) (ChallengeResponse, error) {
	var out ChallengeResponse
	err := c.call(ctx, ChallengePath, req, &out)
	return out, err
}

// Attest has Vigil verify and record evidence.
func (c *Client) Attest(ctx context.Context, req AttestRequest) (AttestResponse, error) {
	var out AttestResponse
	err := c.call(ctx, AttestPath, req, &out)
	return out, err
}

// apiError is Vigil's error body.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// call posts to each server in turn until one answers. Another server is
// tried only when this one could not be dialled or said it cannot serve
// now (503): a request it may have received is never sent again, for an
// attestation is a write and its nonce is single-use.
func (c *Client) call(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	var errs []string
	for _, base := range c.servers {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+c.token)
		resp, err := c.http.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			errs = append(errs, fmt.Sprintf("%s: %v", base, scrub(err, c.token)))
			if notSent(err) {
				continue
			}
			// The member may have the request: another must not get it.
			return fmt.Errorf("%s (not sent to another member: the outcome is unknown)", strings.Join(errs, "; "))
		}
		data, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if rerr != nil {
			errs = append(errs, fmt.Sprintf("%s: reading the answer: %v", base, rerr))
			continue
		}
		if resp.StatusCode == http.StatusOK {
			if err := json.Unmarshal(data, out); err != nil {
				return fmt.Errorf("%s%s: bad answer: %w", base, path, err)
			}
			return nil
		}
		var ae apiError
		_ = json.Unmarshal(data, &ae)
		if ae.Message == "" {
			ae.Message = strings.TrimSpace(string(data))
		}
		switch resp.StatusCode {
		case http.StatusBadRequest, http.StatusForbidden, http.StatusNotFound, http.StatusConflict:
			return &Refusal{Reason: ae.Message}
		case http.StatusUnauthorized:
			return fmt.Errorf("%s refused the plugin's token (%s): is token_file a line of the members' --spire-tpm-token-file?", base, ae.Message)
		case http.StatusServiceUnavailable:
			errs = append(errs, fmt.Sprintf("%s: %s (%s)", base, ae.Message, ae.Code))
			continue
		}
		return fmt.Errorf("%s%s: %s: %s (%s)", base, path, resp.Status, ae.Message, ae.Code)
	}
	return fmt.Errorf("no Vigil member answered: %s", strings.Join(errs, "; "))
}

// notSent reports whether err means the request never reached the member:
// the connection was not made.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// scrub removes the token from an error's text, should a transport ever
// quote a header.
func scrub(err error, token string) string {
	return strings.ReplaceAll(err.Error(), token, "[token]")
}
