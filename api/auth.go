package api

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// MinTokenLen is the shortest bearer token accepted.
const MinTokenLen = 24

// PeerActor is the actor name of another Vigil member calling with the
// peer token derived from the cluster key.
const PeerActor = "vigil-peer"

// Tokens authenticates bearer tokens. Operators' tokens come from a file of
// "name:token" lines; members of the cluster use a peer token derived from
// the cluster key, so no operator token has to be shared with them.
type Tokens struct {
	byHash map[[32]byte]string // sha256(token) -> actor
}

// PeerToken derives the token members use to call each other.
func PeerToken(clusterKey []byte) string {
	m := hmac.New(sha256.New, clusterKey)
	m.Write([]byte("vigil api peer token v1"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// LoadTokens reads a token file. Each non-empty line not starting with '#'
// is "name:token" or a bare token (named "operator").
func LoadTokens(path string, clusterKey []byte) (*Tokens, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read token file: %w", err)
	}
	t, err := ParseTokens(data)
	if err != nil {
		return nil, fmt.Errorf("token file %s: %w", path, err)
	}
	if len(clusterKey) > 0 {
		t.add(PeerActor, PeerToken(clusterKey))
	}
	return t, nil
}

// ParseTokens reads the token file format.
func ParseTokens(data []byte) (*Tokens, error) {
	t := &Tokens{byHash: make(map[[32]byte]string)}
	sc := bufio.NewScanner(bytes.NewReader(data))
	line := 0
	for sc.Scan() {
		line++
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		name, tok, ok := strings.Cut(l, ":")
		if !ok {
			name, tok = "operator", l
		}
		if len(tok) < MinTokenLen {
			return nil, fmt.Errorf("line %d: token is shorter than %d characters", line, MinTokenLen)
		}
		if name == PeerActor || name == "" {
			return nil, fmt.Errorf("line %d: invalid token name %q", line, name)
		}
		t.add(name, tok)
	}
	if len(t.byHash) == 0 {
		return nil, errors.New("no tokens")
	}
	return t, nil
}

// FirstToken returns the token of the first entry of a token file, which
// is what the CLI sends when given that file.
func FirstToken(data []byte) (string, error) {
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if _, tok, ok := strings.Cut(l, ":"); ok {
			return tok, nil
		}
		return l, nil
	}
	return "", errors.New("token file holds no token")
}

func (t *Tokens) add(name, tok string) { t.byHash[sha256.Sum256([]byte(tok))] = name }

// Shared names a token of t that o also holds ("" if none): a token given
// two powers would have the greater.
func (t *Tokens) Shared(o *Tokens) string {
	if t == nil || o == nil {
		return ""
	}
	for h, name := range t.byHash {
		if _, ok := o.byHash[h]; ok {
			return name
		}
	}
	return ""
}

// Actor returns who holds the request's bearer token. Tokens are compared
// by their SHA-256, in constant time against every known token.
func (t *Tokens) Actor(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" {
		return "", false
	}
	sum := sha256.Sum256([]byte(tok))
	actor, found := "", false
	for k, name := range t.byHash {
		if subtle.ConstantTimeCompare(k[:], sum[:]) == 1 {
			actor, found = name, true
		}
	}
	return actor, found
}
