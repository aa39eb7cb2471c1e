package xds

import (
	"slices"
	"sync"
	"testing"
)

// blockedPool returns a one-worker pool whose worker is busy until the
// returned release is called.
func blockedPool(t *testing.T) (p *pool, release func()) {
	t.Helper()
	p = newPool(1)
	started, unblock := make(chan struct{}), make(chan struct{})
	p.submit(false, func() { close(started); <-unblock })
	<-started
	var once sync.Once
	release = func() { once.Do(func() { close(unblock) }) }
	t.Cleanup(func() { release(); p.close() })
	return p, release
}

func TestPoolRunsUrgentJobsFirst(t *testing.T) {
	p, release := blockedPool(t)
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	job := func(name string) func() {
		wg.Add(1)
		return func() {
			defer wg.Done()
			mu.Lock()
			defer mu.Unlock()
			order = append(order, name)
		}
	}
	p.submit(false, job("normal-1"))
	p.submit(true, job("urgent-1"))
	p.submit(false, job("normal-2"))
	p.submit(true, job("urgent-2"))
	release()
	wg.Wait()
	if want := []string{"urgent-1", "urgent-2", "normal-1", "normal-2"}; !slices.Equal(order, want) {
		t.Fatalf("ran %v, want %v", order, want)
	}
}

func TestPoolCloseDropsQueuedJobsAndWaitsForRunningOnes(t *testing.T) {
	p, release := blockedPool(t)
	ran := make(chan string, 2)
	p.submit(false, func() { ran <- "queued" })
	p.submit(true, func() { ran <- "queued urgent" })
	closed := make(chan struct{})
	go func() { p.close(); close(closed) }()
	eventually(t, "the pool closing", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.closed
	})
	select {
	case <-closed:
		t.Fatal("close returned while a job was running")
	default:
	}
	release()
	<-closed
	if p.submit(false, func() { ran <- "late" }) {
		t.Error("a closed pool accepted a job")
	}
	close(ran)
	for name := range ran {
		t.Errorf("job %q ran after close", name)
	}
}

func TestPoolRunsJobsInParallel(t *testing.T) {
	p := newPool(3)
	defer p.close()
	// Three jobs that each wait for the other two: they finish only if
	// they run at the same time.
	var wg sync.WaitGroup
	wg.Add(3)
	for range 3 {
		p.submit(false, func() { wg.Done(); wg.Wait() })
	}
	wg.Wait()
}
