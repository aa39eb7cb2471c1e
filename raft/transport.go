package raft

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
)

// MinClusterKeyLen is the shortest cluster key accepted.
const MinClusterKeyLen = 32

// Handshake deadlines. Members on a LAN finish a handshake in milliseconds;
// a connection that takes longer is most likely holding a slot on purpose
// (see admission.go and docs/decisions/0002-raft-peer-auth.md).
const (
	// helloTimeout is how long an accepted connection has to deliver its
	// TLS ClientHello. A client that connects and sends nothing is closed
	// after it.
	helloTimeout = 1 * time.Second
	// proofTimeout is how long, once the ClientHello has arrived, the TLS
	// handshake and the client's proof may take.
	proofTimeout = 1 * time.Second
	// handshakeTimeout bounds the whole handshake phase: at most this long
	// on the accepting side, and the dialing side's bound for TLS + proof.
	handshakeTimeout = helloTimeout + proofTimeout
)

const (
	ekmLabel = "EXPORTER-vigil-raft-peer"
	proofLen = sha256.Size
)

// ErrPeerAuth is returned when a peer cannot prove it holds the cluster key.
var ErrPeerAuth = errors.New("raft peer failed authentication")

// secureLayer is a hraft.StreamLayer over TLS 1.3 in which both ends prove
// they hold the shared cluster key. Each node presents a throw-away
// self-signed certificate; authentication is an HMAC of the TLS session's
// exported keying material under the cluster key, sent by both sides. The
// proof is bound to the session, so a man in the middle, which must run two
// sessions, cannot relay it. See docs/decisions/0002-raft-peer-auth.md.
type secureLayer struct {
	ln        net.Listener
	advertise net.Addr
	key       []byte
	server    *tls.Config
	client    *tls.Config
	log       *slog.Logger

	accepted  chan net.Conn
	admit     *admission // handshake slots, per-source limits and known peers
	done      chan struct{}
	closeOnce sync.Once

	warnMu   sync.Mutex
	warnAt   time.Time
	warnHeld int
}

var _ hraft.StreamLayer = (*secureLayer)(nil)

func newSecureLayer(ln net.Listener, advertise net.Addr, key []byte, log *slog.Logger) (*secureLayer, error) {
	if len(key) < MinClusterKeyLen {
		return nil, fmt.Errorf("cluster key is %d bytes; at least %d are required", len(key), MinClusterKeyLen)
	}
	cert, err := selfSigned()
	if err != nil {
		return nil, err
	}
	l := &secureLayer{
		ln:        ln,
		advertise: advertise,
		key:       key,
		server: &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{cert},
			// The ClientHello is in: give the rest of the handshake and the
			// proof proofTimeout, in place of the helloTimeout deadline.
			GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
				return nil, hello.Conn.SetDeadline(time.Now().Add(proofTimeout))
			},
		},
		// The peer's certificate is not what authenticates it: the keyed
		// proof over the session below is.
		client:   &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}, //nolint:gosec // authenticated by proveAndVerify
		log:      log,
		accepted: make(chan net.Conn),
		admit:    newAdmission(),
		done:     make(chan struct{}),
	}
	go l.acceptLoop()
	return l, nil
}

func (l *secureLayer) acceptLoop() {
	backoff := 5 * time.Millisecond
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-l.done:
				return
			default:
			}
			// Out of file descriptors or buffers: wait and go on accepting;
			// giving up would silence raft on this member for good.
			l.warn("raft transport accept failed; retrying", err)
			time.Sleep(backoff)
			backoff = min(backoff*2, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		ip := addrIP(conn.RemoteAddr())
		s, err := l.admit.admit(ip)
		if err != nil {
			conn.Close()
			l.warn("raft transport refused a connection", fmt.Errorf("%s: %w", conn.RemoteAddr(), err))
			continue
		}
		go func() {
			peer := l.handshake(conn)
			// Authenticated or not, this connection no longer counts
			// against any limit.
			l.admit.release(s)
			if peer == nil {
				return
			}
			l.admit.remember(ip)
			select {
			case l.accepted <- peer:
			case <-l.done:
				peer.Close()
			}
		}()
	}
}

// warn logs at most one warning per 10 seconds, with how many it held back.
func (l *secureLayer) warn(msg string, err error) {
	l.warnMu.Lock()
	defer l.warnMu.Unlock()
	l.warnHeld++
	if time.Since(l.warnAt) < 10*time.Second {
		return
	}
	l.log.Warn(msg, "err", err, "events_since_last_warning", l.warnHeld)
	l.warnAt, l.warnHeld = time.Now(), 0
}

// handshake runs the accepting side's TLS handshake and proof within
// helloTimeout + proofTimeout, and returns the connection if the peer proved
// the cluster key, or nil after closing it.
func (l *secureLayer) handshake(raw net.Conn) net.Conn {
	conn := tls.Server(raw, l.server)
	err := raw.SetDeadline(time.Now().Add(helloTimeout)) // moved on by GetConfigForClient
	if err == nil {
		err = proveAndVerify(conn, l.key, false)
	}
	if err == nil {
		err = conn.SetDeadline(time.Time{})
	}
	if err != nil {
		l.warn("rejected a raft peer that did not prove the cluster key", fmt.Errorf("%s: %w", raw.RemoteAddr(), err))
		conn.Close()
		return nil
	}
	return conn
}

// Accept returns the next authenticated connection.
func (l *secureLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.accepted:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops listening.
func (l *secureLayer) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.ln.Close()
	})
	return err
}

// Addr is the address peers dial.
func (l *secureLayer) Addr() net.Addr { return l.advertise }

// Dial connects to a peer and authenticates both ends.
func (l *secureLayer) Dial(addr hraft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	raw, err := d.Dial("tcp", string(addr))
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, l.client)
	err = conn.SetDeadline(time.Now().Add(handshakeTimeout))
	if err == nil {
		err = proveAndVerify(conn, l.key, true)
	}
	if err == nil {
		err = conn.SetDeadline(time.Time{})
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("raft peer %s: %w", addr, err)
	}
	// The peer proved the key: its address is a member's, which should not
	// wait behind strangers when it connects to us.
	l.admit.remember(addrIP(raw.RemoteAddr()))
	return conn, nil
}

// proveAndVerify completes the TLS handshake, then the client sends its
// proof first and the server answers with its own, so a server never
// reveals a proof to an unauthenticated client. The caller sets and clears
// the connection's deadline.
func proveAndVerify(conn *tls.Conn, key []byte, isClient bool) error {
	if err := conn.Handshake(); err != nil {
		return fmt.Errorf("tls handshake: %w", err)
	}
	state := conn.ConnectionState()
	ekm, err := state.ExportKeyingMaterial(ekmLabel, nil, 32)
	if err != nil {
		return err
	}
	mine, theirs := proof(key, ekm, isClient), proof(key, ekm, !isClient)
	got := make([]byte, proofLen)
	if isClient {
		if _, err := conn.Write(mine); err != nil {
			return err
		}
		if _, err := io.ReadFull(conn, got); err != nil {
			return fmt.Errorf("%w: no proof from server: %v", ErrPeerAuth, err)
		}
	} else {
		if _, err := io.ReadFull(conn, got); err != nil {
			return fmt.Errorf("%w: no proof from client: %v", ErrPeerAuth, err)
		}
		if !hmac.Equal(got, theirs) {
			return fmt.Errorf("%w: wrong cluster key", ErrPeerAuth)
		}
		if _, err := conn.Write(mine); err != nil {
			return err
		}
	}
	if !hmac.Equal(got, theirs) {
		return fmt.Errorf("%w: wrong cluster key", ErrPeerAuth)
	}
	return nil
}

func proof(key, ekm []byte, client bool) []byte {
	m := hmac.New(sha256.New, key)
	if client {
		m.Write([]byte("client"))
	} else {
		m.Write([]byte("server"))
	}
	m.Write(ekm)
	return m.Sum(nil)
}

func selfSigned() (tls.Certificate, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "vigil-raft-peer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}
