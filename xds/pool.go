package xds

import "sync"

// pool runs jobs on at most a fixed number of goroutines: urgent jobs
// before the others, each kind first in, first out. Workers start when
// there is work and end when there is none, so an idle pool holds no
// goroutine.
type pool struct {
	workers int

	mu      sync.Mutex
	urgent  []func()
	normal  []func()
	running int
	closed  bool
	done    *sync.Cond // signalled when the last worker ends
}

func newPool(workers int) *pool {
	p := &pool{workers: max(1, workers)}
	p.done = sync.NewCond(&p.mu)
	return p
}

// submit queues job; it reports false (and drops the job) once the pool is
// closed.
func (p *pool) submit(urgent bool, job func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	if urgent {
		p.urgent = append(p.urgent, job)
	} else {
		p.normal = append(p.normal, job)
	}
	if p.running < p.workers {
		p.running++
		go p.work()
	}
	return true
}

func (p *pool) work() {
	for {
		job := p.next()
		if job == nil {
			return
		}
		job()
	}
}

// next pops the next job, or ends the worker (returning nil) when there is
// none.
func (p *pool) next() func() {
	p.mu.Lock()
	defer p.mu.Unlock()
	var job func()
	switch {
	case p.closed:
	case len(p.urgent) > 0:
		job, p.urgent = pop(p.urgent)
	case len(p.normal) > 0:
		job, p.normal = pop(p.normal)
	}
	if job == nil {
		p.running--
		if p.running == 0 {
			p.done.Broadcast()
		}
	}
	return job
}

func pop(q []func()) (func(), []func()) {
	job := q[0]
	q[0] = nil
	if len(q) == 1 {
		return job, nil // let the backing array go
	}
	return job, q[1:]
}

// close drops the queued jobs, refuses new ones and waits for the running
// ones to end. Jobs must not call close.
func (p *pool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.urgent, p.normal = nil, nil
	for p.running > 0 {
		p.done.Wait()
	}
}
