package attest

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Nonces. A nonce is 32 bytes that no one can predict or forge, bound to
// one device and carrying its own expiry, so that any member can check one
// that another member issued without a write per challenge:
//
//	nonce = random (12) ‖ expiry (4, Unix seconds, big-endian) ‖ MAC (16)
//	MAC   = HMAC-SHA-256(key, "vigil attestation nonce v1\n" ‖ device ‖ "\n" ‖ random ‖ expiry)[:16]
//
// key is shared by the members (derived from the cluster key). Single use
// across the cluster is enforced where results are recorded: through the
// replicated log, which refuses a nonce already used (raft.StateOp.Nonce).
// See docs/decisions/0007-attestation-nonces.md.

// DefaultNonceTTL is how long a nonce may be answered.
const DefaultNonceTTL = 60 * time.Second

const nonceDomain = "vigil attestation nonce v1\n"

// NewNonce issues a nonce for device, valid for ttl from now.
func NewNonce(key []byte, device string, now time.Time, ttl time.Duration) (nonce []byte, expires time.Time, err error) {
	nonce = make([]byte, NonceSize)
	if _, err := rand.Read(nonce[:12]); err != nil {
		return nil, time.Time{}, fmt.Errorf("nonce: %w", err)
	}
	expires = now.Add(ttl).Truncate(time.Second)
	binary.BigEndian.PutUint32(nonce[12:16], uint32(expires.Unix()))
	copy(nonce[16:], nonceMAC(key, device, nonce[:16]))
	return nonce, expires, nil
}

// Errors of CheckNonce.
var (
	ErrNonceForged  = errors.New("the nonce was not issued by this cluster for this device")
	ErrNonceExpired = errors.New("the nonce has expired")
)

// CheckNonce verifies that nonce was issued for device by a member holding
// key and has not expired at now; it returns its expiry.
func CheckNonce(key []byte, device string, nonce []byte, now time.Time) (time.Time, error) {
	if len(nonce) != NonceSize {
		return time.Time{}, fmt.Errorf("a nonce is %d bytes, not %d", NonceSize, len(nonce))
	}
	if subtle.ConstantTimeCompare(nonce[16:], nonceMAC(key, device, nonce[:16])) != 1 {
		return time.Time{}, ErrNonceForged
	}
	expires := time.Unix(int64(binary.BigEndian.Uint32(nonce[12:16])), 0).UTC()
	if !now.Before(expires) {
		return expires, fmt.Errorf("%w (at %s)", ErrNonceExpired, expires.Format(time.RFC3339))
	}
	return expires, nil
}

func nonceMAC(key []byte, device string, head []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(nonceDomain))
	m.Write([]byte(device))
	m.Write([]byte{'\n'})
	m.Write(head)
	return m.Sum(nil)[:16]
}
