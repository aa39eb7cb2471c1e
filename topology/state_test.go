package topology

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func quarantined(reason string) *SubjectState {
	return &SubjectState{Quarantine: &Quarantine{Reason: reason, By: "operator/alice", Since: time.Unix(1700000000, 0)}}
}

func risky(score int) *SubjectState {
	return &SubjectState{Risk: &Risk{Score: score}}
}

// manyDevices names enough subjects to land in many shards (and, with a
// random hash seed, in shards from both halves of the hash range).
func manyDevices(n int) map[Subject]*SubjectState {
	m := make(map[Subject]*SubjectState, n)
	for i := range n {
		m[DeviceSubject(fmt.Sprintf("dev-%04d", i))] = risky(i % 101)
	}
	return m
}

func TestStateWith(t *testing.T) {
	a, b, g := DeviceSubject("a"), DeviceSubject("b"), GatewaySubject("a")
	tests := []struct {
		name    string
		start   map[Subject]*SubjectState
		updates map[Subject]*SubjectState
		want    map[Subject]*SubjectState // the whole resulting state
	}{
		{"add to empty", nil, map[Subject]*SubjectState{a: risky(10)}, map[Subject]*SubjectState{a: risky(10)}},
		{"add beside", map[Subject]*SubjectState{a: risky(10)}, map[Subject]*SubjectState{b: quarantined("x")},
			map[Subject]*SubjectState{a: risky(10), b: quarantined("x")}},
		{"replace", map[Subject]*SubjectState{a: risky(10)}, map[Subject]*SubjectState{a: risky(90)}, map[Subject]*SubjectState{a: risky(90)}},
		{"remove with nil", map[Subject]*SubjectState{a: risky(10), b: risky(20)}, map[Subject]*SubjectState{a: nil}, map[Subject]*SubjectState{b: risky(20)}},
		{"remove with empty state", map[Subject]*SubjectState{a: risky(10)}, map[Subject]*SubjectState{a: {}}, map[Subject]*SubjectState{}},
		{"remove absent subject", map[Subject]*SubjectState{a: risky(10)}, map[Subject]*SubjectState{b: nil}, map[Subject]*SubjectState{a: risky(10)}},
		{"same name, other kind", map[Subject]*SubjectState{a: risky(10)}, map[Subject]*SubjectState{g: quarantined("tamper")},
			map[Subject]*SubjectState{a: risky(10), g: quarantined("tamper")}},
		{"mixed batch", map[Subject]*SubjectState{a: risky(10), b: risky(20)}, map[Subject]*SubjectState{a: nil, b: risky(30), g: risky(40)},
			map[Subject]*SubjectState{b: risky(30), g: risky(40)}},
		{"no updates", map[Subject]*SubjectState{a: risky(10)}, nil, map[Subject]*SubjectState{a: risky(10)}},
		{"many subjects", nil, manyDevices(3000), manyDevices(3000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := NewState().With(tt.start)
			after := before.With(tt.updates)
			checkState(t, "after", after, tt.want)
			// The receiver is unchanged: With never writes to a shared shard.
			want := tt.start
			if want == nil {
				want = map[Subject]*SubjectState{}
			}
			checkState(t, "before", before, want)
		})
	}
}

// checkState compares st with want through every accessor.
func checkState(t *testing.T, label string, st *State, want map[Subject]*SubjectState) {
	t.Helper()
	if st.Len() != len(want) {
		t.Errorf("%s: Len() = %d, want %d", label, st.Len(), len(want))
	}
	for s, w := range want {
		got := st.Get(s)
		if got == nil || fmt.Sprint(got.Risk, got.Quarantine) != fmt.Sprint(w.Risk, w.Quarantine) {
			t.Errorf("%s: Get(%v) = %+v, want %+v", label, s, got, w)
		}
	}
	seen := 0
	st.Range(func(s Subject, v *SubjectState) bool {
		seen++
		if _, ok := want[s]; !ok {
			t.Errorf("%s: Range visits %v, which should have no state", label, s)
		}
		if v.IsZero() {
			t.Errorf("%s: Range visits %v with a zero state", label, s)
		}
		return true
	})
	if seen != len(want) {
		t.Errorf("%s: Range visited %d subjects, want %d", label, seen, len(want))
	}
}

func TestStateRangeStops(t *testing.T) {
	st := NewState().With(manyDevices(100))
	calls := 0
	st.Range(func(Subject, *SubjectState) bool {
		calls++
		return calls < 7
	})
	if calls != 7 {
		t.Errorf("Range called fn %d times after it returned false on call 7", calls)
	}
}

func TestStateRetain(t *testing.T) {
	all := manyDevices(500)
	all[GatewaySubject("gw-1")] = quarantined("x")
	st := NewState().With(all)

	devicesOnly := st.Retain(func(s Subject) bool { return s.Kind == KindDevice })
	want := manyDevices(500)
	checkState(t, "retained", devicesOnly, want)
	checkState(t, "original", st, all)

	if same := st.Retain(func(Subject) bool { return true }); same != st {
		t.Error("Retain that keeps everything returned a new State")
	}
	if none := st.Retain(func(Subject) bool { return false }); none.Len() != 0 {
		t.Errorf("Retain that keeps nothing left %d subjects", none.Len())
	}
}

// TestStateConcurrentReaders reads old states while new ones are derived
// from them; run with -race it proves With never writes to shared shards.
func TestStateConcurrentReaders(t *testing.T) {
	st := NewState().With(manyDevices(2000))
	var wg sync.WaitGroup
	states := make(chan *State, 64)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(states)
		cur := st
		for i := range 64 {
			cur = cur.With(map[Subject]*SubjectState{
				DeviceSubject(fmt.Sprintf("dev-%04d", i*31%2000)): quarantined("round " + fmt.Sprint(i)),
				DeviceSubject(fmt.Sprintf("dev-%04d", i*17%2000)): nil,
			})
			states <- cur
		}
	}()
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				n := 0
				st.Range(func(s Subject, v *SubjectState) bool {
					if st.Get(s) != v {
						t.Errorf("Get(%v) disagrees with Range", s)
					}
					n++
					return true
				})
				if n != 2000 || st.Len() != 2000 {
					t.Errorf("the original state changed: Range saw %d, Len %d", n, st.Len())
				}
			}
		}()
	}
	for s := range states {
		_ = s.Len()
	}
	wg.Wait()
}

func TestSubjectStateIsZero(t *testing.T) {
	tests := []struct {
		name string
		st   *SubjectState
		want bool
	}{
		{"nil", nil, true},
		{"empty", &SubjectState{}, true},
		{"quarantine", quarantined("x"), false},
		{"risk of zero", risky(0), false},
		{"attestation", &SubjectState{Attestation: &Attestation{Method: "tpm"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.st.IsZero(); got != tt.want {
				t.Errorf("IsZero() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSnapshot(t *testing.T) {
	ix := mustLoad(t, lookupDoc)
	st := NewState().With(map[Subject]*SubjectState{
		DeviceSubject("light-a"):  quarantined("tamper switch"),
		DeviceSubject("light-b"):  risky(40),
		GatewaySubject("gw-s1"):   quarantined("unpatched"),
		DeviceSubject("sensor-a"): {Quarantine: &Quarantine{Reason: "risk 95"}, Risk: &Risk{Score: 95}},
	})
	snap := NewSnapshot(42, 40, ix, st)
	if snap.Revision() != 42 || snap.DocumentRevision() != 40 || !snap.HasDocument() {
		t.Errorf("Revision %d, DocumentRevision %d, HasDocument %v; want 42, 40, true",
			snap.Revision(), snap.DocumentRevision(), snap.HasDocument())
	}
	if snap.Index() != ix || snap.State() != st {
		t.Error("Index() or State() is not what the snapshot was built from")
	}
	if got := snap.SubjectState(DeviceSubject("light-b")); got == nil || got.Risk.Score != 40 {
		t.Errorf("SubjectState(light-b) = %+v, want risk 40", got)
	}
	if got := snap.SubjectState(DeviceSubject("light-c")); got != nil {
		t.Errorf("SubjectState(light-c) = %+v, want nil", got)
	}
	tests := []struct {
		subject Subject
		want    bool
	}{
		{DeviceSubject("light-a"), true},
		{DeviceSubject("sensor-a"), true},
		{DeviceSubject("light-b"), false}, // risky, not quarantined
		{DeviceSubject("light-c"), false}, // no state at all
		{GatewaySubject("gw-s1"), true},
		{DeviceSubject("light-s"), false}, // behind gw-s1, not itself quarantined
		{DeviceSubject("unknown"), false},
		{GatewaySubject("light-a"), false}, // the name of a quarantined device, another kind
	}
	for _, tt := range tests {
		if got := snap.Quarantined(tt.subject); got != tt.want {
			t.Errorf("Quarantined(%v) = %v, want %v", tt.subject, got, tt.want)
		}
	}
	// A later snapshot with released state leaves this one as it was.
	next := NewSnapshot(43, 40, ix, st.With(map[Subject]*SubjectState{DeviceSubject("light-a"): nil}))
	if next.Quarantined(DeviceSubject("light-a")) || !snap.Quarantined(DeviceSubject("light-a")) {
		t.Error("releasing in a new snapshot changed the old one, or did not release")
	}
}

func TestEmptySnapshot(t *testing.T) {
	snap := EmptySnapshot()
	if snap.Revision() != 0 || snap.DocumentRevision() != 0 || snap.HasDocument() {
		t.Errorf("EmptySnapshot: revision %d, document revision %d, HasDocument %v", snap.Revision(), snap.DocumentRevision(), snap.HasDocument())
	}
	if snap.Index() == nil || snap.Index().NumDevices() != 0 || snap.State().Len() != 0 {
		t.Error("EmptySnapshot is not empty")
	}
	if snap.Quarantined(DeviceSubject("x")) || snap.SubjectState(DeviceSubject("x")) != nil {
		t.Error("EmptySnapshot holds state")
	}
}
