package siem

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
)

// DefaultHTTPTimeout bounds one POST of an HTTP sink.
const DefaultHTTPTimeout = 30 * time.Second

// poster POSTs JSON to one URL and sorts the answers: 2xx is delivered; a
// 4xx that says the request as such was refused is permanent; anything
// else (5xx, network errors, and the 4xx that mean the receiver or Vigil's
// configuration is at fault, not the alert) is retried.
type poster struct {
	client  *http.Client
	url     string
	display string // url without its password, for errors
	token   string
}

func newPoster(raw, token string, client *http.Client, timeout time.Duration) (*poster, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an http:// or https:// URL", u.Redacted())
	}
	if client == nil {
		if timeout <= 0 {
			timeout = DefaultHTTPTimeout
		}
		client = &http.Client{Timeout: timeout, Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	return &poster{client: client, url: u.String(), display: u.Redacted(), token: token}, nil
}

// retryable4xx are the client errors that do not depend on the alert sent:
// authentication, a wrong URL or method, a timeout or rate limit. The
// outbox keeps retrying those rather than discard every alert while the
// configuration is wrong.
var retryable4xx = map[int]bool{
	http.StatusUnauthorized:                true,
	http.StatusForbidden:                   true,
	http.StatusNotFound:                    true,
	http.StatusMethodNotAllowed:            true,
	http.StatusProxyAuthRequired:           true,
	http.StatusRequestTimeout:              true,
	http.StatusMisdirectedRequest:          true,
	http.StatusTooEarly:                    true,
	http.StatusTooManyRequests:             true,
	http.StatusRequestHeaderFieldsTooLarge: true,
}

func (p *poster) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "vigil/"+DefaultVersion())
	if p.token != "" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("POST %s: %w", p.display, err)
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	err = fmt.Errorf("POST %s: %s%s", p.display, resp.Status, bodyText(snippet))
	if resp.StatusCode >= 400 && resp.StatusCode < 500 && !retryable4xx[resp.StatusCode] {
		return Permanent(err)
	}
	return err
}

// bodyText is the start of an error response, made printable, for an error
// message.
func bodyText(b []byte) string {
	s := strings.TrimSpace(strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, string(b)))
	if len(s) > 200 {
		s = truncate(s, 200)
	}
	if s == "" {
		return ""
	}
	return ": " + s
}
