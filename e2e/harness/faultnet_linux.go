package harness

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// PIDIdentifier names a connection's source by the process that owns the
// dialing socket: it finds the socket whose local address is remote in
// /proc/net/tcp (and tcp6), then the process among pids() whose
// /proc/<pid>/fd holds that socket's inode, and returns that process's
// name, or ClientEndpoint. The dialer is in the proxy's network namespace,
// so its socket's local address is the accepted connection's remote one.
// pids is called for every connection, so restarted members (new PIDs)
// keep their names.
func PIDIdentifier(pids func() map[string]int) func(net.Addr) string {
	return func(remote net.Addr) string {
		tcp, ok := remote.(*net.TCPAddr)
		if !ok || tcp == nil {
			return ClientEndpoint
		}
		inode, err := socketInode(tcp.AddrPort())
		if err != nil {
			return ClientEndpoint
		}
		want := fmt.Sprintf("socket:[%d]", inode)
		byPID := pids()
		names := make([]string, 0, len(byPID))
		for name := range byPID {
			names = append(names, name)
		}
		slices.Sort(names) // the same answer every time, should two share a PID
		for _, name := range names {
			if pid := byPID[name]; pid > 0 && ownsSocket(pid, want) {
				return name
			}
		}
		return ClientEndpoint
	}
}

var errNoSocket = errors.New("no such socket")

// socketInode is the inode of the TCP socket bound locally to addr whose
// peer is a socket of this process: the dialing side of a connection that
// a listener of this process (a FaultNet proxy's) accepted. Linux gives
// one ephemeral port to several connections at once when they go to
// different destinations, so addr alone may also name sockets that other
// processes connected elsewhere.
func socketInode(addr netip.AddrPort) (uint64, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	var rows []tcpSocket
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(table)
		if err != nil {
			continue // no IPv6 here, say
		}
		rows = append(rows, parseTable(data)...)
	}
	return findInode(rows, addr, func(inode uint64) bool {
		return ownsSocket(os.Getpid(), fmt.Sprintf("socket:[%d]", inode))
	})
}

// tcpSocket is a row of /proc/net/tcp{,6}.
type tcpSocket struct {
	local, remote netip.AddrPort
	inode         uint64
}

// parseTable reads the rows of a /proc/net/tcp{,6} table (addresses
// compared unmapped), skipping those without an inode: sockets in
// TIME_WAIT show inode 0 and belong to no process.
func parseTable(table []byte) []tcpSocket {
	var out []tcpSocket
	sc := bufio.NewScanner(bytes.NewReader(table))
	sc.Scan() // the header
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		local, err1 := parseProcAddr(fields[1])
		remote, err2 := parseProcAddr(fields[2])
		inode, err3 := strconv.ParseUint(fields[9], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || inode == 0 {
			continue
		}
		out = append(out, tcpSocket{local, remote, inode})
	}
	return out
}

// findInode picks the socket bound locally to addr whose peer (the socket
// bound to its remote address and connected back to addr) ours reports
// as this process's.
func findInode(rows []tcpSocket, addr netip.AddrPort, ours func(inode uint64) bool) (uint64, error) {
	for _, r := range rows {
		if r.local != addr {
			continue
		}
		for _, peer := range rows {
			if peer.local == r.remote && peer.remote == addr && ours(peer.inode) {
				return r.inode, nil
			}
		}
	}
	return 0, errNoSocket
}

// parseProcAddr parses an address of /proc/net/tcp{,6}: the IP in hex, as
// the kernel's 32-bit words in host (little-endian) byte order, a colon,
// and the port in big-endian hex. IPv4-mapped IPv6 addresses come back
// unmapped.
func parseProcAddr(s string) (netip.AddrPort, error) {
	ipHex, portHex, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q: no port", s)
	}
	raw, err := hex.DecodeString(ipHex)
	if err != nil || len(raw) != 4 && len(raw) != 16 {
		return netip.AddrPort{}, fmt.Errorf("address %q: bad IP", s)
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: bad port", s)
	}
	for w := 0; w < len(raw); w += 4 {
		slices.Reverse(raw[w : w+4])
	}
	ip, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)), nil
}

// ownsSocket reports whether process pid has a descriptor open on link
// ("socket:[inode]").
func ownsSocket(pid int, link string) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && l == link {
			return true
		}
	}
	return false
}

// pauseSignals are the signals that stop and continue a member.
func pauseSignals() (stop, cont os.Signal, err error) {
	return syscall.SIGSTOP, syscall.SIGCONT, nil
}
