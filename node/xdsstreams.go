package node

import (
	"context"
	"net"
	"sync"
	"time"
)

// xdsStreams lets a member end its proxies' xDS connections when it finds
// itself cut off from its cluster's quorum.
//
// A cut-off member keeps serving the configuration it last knew, but
// Envoy does not leave a management server whose stream stays up: a
// gateway would keep it, and miss every quarantine the rest of the cluster
// commits, for as long as the partition lasts. Closing the connections
// once, when the member is found cut off, makes each Envoy dial again; one
// whose bootstrap lists other members (vigil envoy bootstrap --xds-server
// A,B,C) may reach one in contact and converges to what it serves, and one
// that can reach only this member comes back to it and gets the same
// configuration it had (Envoy keeps its configuration while it
// reconnects). The connections are closed under gRPC, as a restart of the
// member would: a stream's context cannot end a discovery stream that is
// waiting for the proxy's next request.
type xdsStreams struct {
	net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func trackConns(ln net.Listener) *xdsStreams {
	return &xdsStreams{Listener: ln, conns: map[net.Conn]struct{}{}}
}

// Accept tracks every connection until it is closed.
func (s *xdsStreams) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, s: s}
	s.mu.Lock()
	s.conns[tc] = struct{}{}
	s.mu.Unlock()
	return tc, nil
}

// endAll closes every open connection and says how many.
func (s *xdsStreams) endAll() int {
	s.mu.Lock()
	open := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		open = append(open, c)
	}
	s.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
	return len(open)
}

type trackedConn struct {
	net.Conn
	s    *xdsStreams
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// endStreamsEvery spaces the closings: a member whose contact flaps must
// not make thousands of gateways handshake again every few seconds.
const endStreamsEvery = time.Minute

// endStreamsWhenCutOff ends the proxies' xDS streams when this member finds
// itself cut off from its quorum (see xdsStreams), at most once a minute.
func (n *Node) endStreamsWhenCutOff(ctx context.Context) error {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	cut := false
	var lastEnded time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		now := n.Ready() && n.quorum.partitioned() != nil
		if now && !cut && time.Since(lastEnded) >= endStreamsEvery {
			lastEnded = time.Now()
			if ended := n.xds.streams.endAll(); ended > 0 {
				n.cfg.Logger.Warn("cut off from the cluster: closed the proxies' xDS connections so that they reconnect, to another member if they can reach one",
					"connections", ended)
			}
		}
		cut = now
	}
}
