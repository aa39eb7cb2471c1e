package api

import (
	"testing"
	"time"
)

func TestWarnLimiterWritesOncePerSecondAndCountsTheRest(t *testing.T) {
	var l WarnLimiter
	t0 := time.Unix(1000, 0)
	if ok, held := l.Allow("x", t0); !ok || held != 0 {
		t.Fatalf("first: %v %d", ok, held)
	}
	for i := range 500 {
		if ok, _ := l.Allow("x", t0.Add(time.Duration(i)*time.Millisecond)); ok {
			t.Fatalf("warning %d within the second was written", i)
		}
	}
	if ok, _ := l.Allow("y", t0); !ok {
		t.Fatal("another kind is limited separately")
	}
	if ok, held := l.Allow("x", t0.Add(time.Second)); !ok || held != 500 {
		t.Fatalf("after a second: %v, held %d; want written, 500 held back", ok, held)
	}
}
