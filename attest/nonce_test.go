package attest

import (
	"errors"
	"testing"
	"time"
)

func TestNonces(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	n, exp, err := NewNonce(key, "slc-1", now, DefaultNonceTTL)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := CheckNonce(key, "slc-1", n, now.Add(30*time.Second)); err != nil || !got.Equal(exp) {
		t.Fatalf("CheckNonce = %v, %v; want %v", got, err, exp)
	}
	if _, err := CheckNonce(key, "slc-2", n, now); !errors.Is(err, ErrNonceForged) {
		t.Errorf("another device's nonce: %v", err)
	}
	if _, err := CheckNonce([]byte("another cluster's key, 32 bytes!"), "slc-1", n, now); !errors.Is(err, ErrNonceForged) {
		t.Errorf("another cluster's nonce: %v", err)
	}
	if _, err := CheckNonce(key, "slc-1", n, now.Add(61*time.Second)); !errors.Is(err, ErrNonceExpired) {
		t.Errorf("an expired nonce: %v", err)
	}
	n[3] ^= 1
	if _, err := CheckNonce(key, "slc-1", n, now); !errors.Is(err, ErrNonceForged) {
		t.Errorf("a changed nonce: %v", err)
	}
	m, _, _ := NewNonce(key, "slc-1", now, DefaultNonceTTL)
	if string(m[:12]) == string(n[:12]) {
		t.Error("two nonces share their random part")
	}
}
