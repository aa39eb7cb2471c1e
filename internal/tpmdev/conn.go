package tpmdev

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Conn is a connection to a TPM: it sends TPM2_Startup(CLEAR) itself
// when the TPM answers TPM_RC_INITIALIZE (a swtpm started without
// --flags startup-clear), and names the TPM in its errors. It is a
// transport.TPM for go-tpm's commands. It is not safe for concurrent use.
type Conn struct {
	t       transport.TPM
	closer  io.Closer
	desc    string
	swtpm   bool
	started bool // Startup was tried already
}

// Close closes the connection.
func (c *Conn) Close() error { return c.closer.Close() }

// TPM 2.0 header fields (Part 1) and the codes Conn looks at.
const (
	tpmCCStartup    = 0x00000144
	tpmRCInitialize = 0x00000100
	tpmRCFailure    = 0x00000101
	tpmHeaderSize   = 10
	tpmCodeAt       = 6 // the command code of a command, the response code of a response
)

// Send sends a command and returns the TPM's response.
func (c *Conn) Send(cmd []byte) ([]byte, error) {
	rsp, err := c.t.Send(cmd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.desc, err)
	}
	if len(rsp) < tpmHeaderSize || len(cmd) < tpmHeaderSize {
		return rsp, nil // go-tpm reports the malformed response
	}
	rc := binary.BigEndian.Uint32(rsp[tpmCodeAt:])
	cc := binary.BigEndian.Uint32(cmd[tpmCodeAt:])
	switch {
	case rc == tpmRCInitialize && cc != tpmCCStartup && !c.started:
		c.started = true
		if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(c.t); err != nil {
			return nil, fmt.Errorf("%s was not started up (TPM_RC_INITIALIZE) and TPM2_Startup(CLEAR) failed: %w", c.desc, err)
		}
		return c.Send(cmd)
	case rc == tpmRCFailure && c.swtpm:
		return nil, fmt.Errorf("%s answers TPM_RC_FAILURE: swtpm was started without --flags not-need-init (or startup-clear) and was not initialised on its control channel (swtpm_ioctl -i), or it is in failure mode", c.desc)
	}
	return rsp, nil
}

// Open opens the TPM a --tpm spec names: a character device such as
// /dev/tpmrm0 (or /dev/tpm0), "swtpm:host=H,port=P" for swtpm's data
// channel over TCP (default host 127.0.0.1, port 2321; either may be left
// out, and "swtpm" alone is both defaults), or "swtpm:path=SOCKET" over a
// unix socket. The caller closes the connection.
func Open(spec string) (*Conn, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, fmt.Errorf("--tpm is empty: give a device (%s) or swtpm:host=H,port=P", DefaultTPM)
	}
	if conf, ok := strings.CutPrefix(spec, "swtpm:"); ok || spec == "swtpm" {
		return openSwtpm(conf)
	}
	if strings.Contains(spec, ":") && !strings.HasPrefix(spec, "/") {
		return nil, fmt.Errorf("--tpm %q: unknown kind of TPM: give a device path (%s) or swtpm:host=H,port=P", spec, DefaultTPM)
	}
	fi, err := os.Stat(spec)
	if err != nil {
		return nil, fmt.Errorf("--tpm %s: %w (is there a TPM? load its kernel driver, or run swtpm and pass --tpm swtpm:host=H,port=P)", spec, err)
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return nil, fmt.Errorf("--tpm %s is not a character device (%s); a TPM is reached through /dev/tpmrm0 or /dev/tpm0", spec, fi.Mode())
	}
	f, err := os.OpenFile(spec, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("--tpm %s: %w (the tss group usually may open /dev/tpmrm0)", spec, err)
	}
	return &Conn{t: transport.FromReadWriteCloser(f), closer: f, desc: "the TPM " + spec}, nil
}

// openSwtpm connects to swtpm's data channel: "host=H,port=P" (TCP) or
// "path=SOCKET" (unix), as tpm2-tss's swtpm TCTI takes them.
func openSwtpm(conf string) (*Conn, error) {
	host, port, path := "127.0.0.1", defaultSwtpmPort, ""
	for _, kv := range strings.Split(conf, ",") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		switch k = strings.TrimSpace(k); {
		case !ok:
			return nil, fmt.Errorf("--tpm swtpm:%s: %q is not KEY=VALUE (host=H,port=P or path=SOCKET)", conf, kv)
		case k == "host":
			host = strings.Trim(strings.TrimSpace(v), "[]")
		case k == "port":
			p, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || p <= 0 || p > 65535 {
				return nil, fmt.Errorf("--tpm swtpm:%s: port %q is not a TCP port", conf, v)
			}
			port = p
		case k == "path":
			path = strings.TrimSpace(v)
		default:
			return nil, fmt.Errorf("--tpm swtpm:%s: unknown setting %q (host, port or path)", conf, k)
		}
	}
	network, addr := "tcp", net.JoinHostPort(host, strconv.Itoa(port))
	if path != "" {
		network, addr = "unix", path
	}
	desc := fmt.Sprintf("swtpm at %s", addr)
	conn, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		hint := fmt.Sprintf("type=tcp,port=%d", port)
		if path != "" {
			hint = "type=unixio,path=" + path
		}
		return nil, fmt.Errorf("%s: %w (is swtpm running with its data channel there: swtpm socket --tpm2 --server %s ...?)", desc, err, hint)
	}
	return &Conn{t: &rawTPM{conn: conn}, closer: conn, desc: desc, swtpm: true}, nil
}

// rawTPM speaks raw TPM 2.0 command/response framing over a stream, as
// swtpm's data channel does: a command, then a response whose header gives
// its size.
type rawTPM struct{ conn net.Conn }

func (r *rawTPM) Send(cmd []byte) ([]byte, error) {
	r.conn.SetDeadline(time.Now().Add(tpmCommandTimeout))
	defer r.conn.SetDeadline(time.Time{})
	if _, err := r.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("sending a command: %w", err)
	}
	hdr := make([]byte, tpmHeaderSize)
	if _, err := io.ReadFull(r.conn, hdr); err != nil {
		return nil, fmt.Errorf("reading a response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < tpmHeaderSize || size > maxTPMResponse {
		return nil, fmt.Errorf("the response header gives a size of %d bytes (10 to %d): not a TPM 2.0 response", size, maxTPMResponse)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(r.conn, rsp[tpmHeaderSize:]); err != nil {
		return nil, fmt.Errorf("reading a %d-byte response: %w", size, err)
	}
	return rsp, nil
}
