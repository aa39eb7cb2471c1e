package siem

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The outbox's files.
//
// A segment, seg-<first sequence number, 20 digits>.log, is segMagic
// followed by records. A record is a 16-byte header and a payload (one
// Alert as JSON):
//
//	length  uint32, big endian: the payload's length, 1 … maxPayload
//	crc     uint32, big endian: CRC-32C of length, seq and the payload
//	seq     uint64, big endian: the record's sequence number
//	payload length bytes
//
// Sequence numbers start at 1 and increase by one per record across
// segments (a torn or corrupt file leaves a gap, which readers count).
//
// An acknowledgement file, ack-<sink>.pos, is ackMagic, the sequence number
// of the first record the sink has not acknowledged (uint64, big endian) and
// the CRC-32C of those 16 bytes (uint32, big endian). It is replaced
// atomically (written to a temporary file, synced, renamed, directory
// synced).
const (
	segMagic   = "VGSIEMS\x01"
	ackMagic   = "VGSIEMA\x01"
	recHeader  = 16
	maxPayload = 1 << 20
	ackLen     = len(ackMagic) + 8 + 4
	segPrefix  = "seg-"
	segSuffix  = ".log"
	ackPrefix  = "ack-"
	ackSuffix  = ".pos"
	tmpSuffix  = ".tmp"
	// maxSeq bounds sequence numbers (records and acknowledgements beyond
	// it are corrupt), far from overflow.
	maxSeq    = 1 << 62
	lockName  = "LOCK"
	readChunk = 256 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errShort: the file ends inside a record (a torn write).
var errShort = errors.New("record cut short")

// errCorrupt: a record's length or checksum is wrong.
var errCorrupt = errors.New("record corrupt")

// appendRecord appends seq's record holding payload to buf.
func appendRecord(buf []byte, seq uint64, payload []byte) []byte {
	var h [recHeader]byte
	binary.BigEndian.PutUint32(h[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint64(h[8:16], seq)
	crc := crc32.Update(0, castagnoli, h[0:4])
	crc = crc32.Update(crc, castagnoli, h[8:16])
	crc = crc32.Update(crc, castagnoli, payload)
	binary.BigEndian.PutUint32(h[4:8], crc)
	buf = append(buf, h[:]...)
	return append(buf, payload...)
}

// parseRecord decodes the record at the start of b: its sequence number,
// its payload (aliasing b) and its length in bytes. errShort means b ends
// inside the record; errCorrupt, that its header or checksum is wrong.
func parseRecord(b []byte) (seq uint64, payload []byte, n int, err error) {
	if len(b) < recHeader {
		return 0, nil, 0, errShort
	}
	size := binary.BigEndian.Uint32(b[0:4])
	if size == 0 || size > maxPayload {
		return 0, nil, 0, fmt.Errorf("%w: length %d", errCorrupt, size)
	}
	n = recHeader + int(size)
	if len(b) < n {
		return 0, nil, 0, errShort
	}
	crc := crc32.Update(0, castagnoli, b[0:4])
	crc = crc32.Update(crc, castagnoli, b[8:n])
	if crc != binary.BigEndian.Uint32(b[4:8]) {
		return 0, nil, 0, fmt.Errorf("%w: checksum mismatch", errCorrupt)
	}
	return binary.BigEndian.Uint64(b[8:16]), b[recHeader:n], n, nil
}

// segReader reads records from a segment file through a buffer.
type segReader struct {
	r     io.ReaderAt
	buf   []byte // the file's bytes from start
	start int64
}

// record returns the record at off, reading nothing at or past limit.
// The payload aliases the reader's buffer until the next call.
func (r *segReader) record(off, limit int64) (seq uint64, payload []byte, next int64, err error) {
	for need := recHeader; ; {
		if err := r.fill(off, need, limit); err != nil {
			return 0, nil, 0, err
		}
		seq, payload, n, err := parseRecord(r.buf[off-r.start:])
		if err == errShort {
			size := recHeader + int64(binary.BigEndian.Uint32(r.buf[off-r.start:]))
			if int(size) <= need || off+size > limit {
				return 0, nil, 0, errShort
			}
			need = int(size)
			continue
		}
		if err != nil {
			return 0, nil, 0, err
		}
		return seq, payload, off + int64(n), nil
	}
}

// fill makes the buffer hold at least need bytes from off, if the file has
// them before limit.
func (r *segReader) fill(off int64, need int, limit int64) error {
	if off >= r.start && off+int64(need) <= r.start+int64(len(r.buf)) {
		return nil
	}
	if off+int64(need) > limit {
		return errShort
	}
	size := int64(max(need, readChunk))
	size = min(size, limit-off)
	if int64(cap(r.buf)) < size {
		r.buf = make([]byte, size)
	}
	r.buf = r.buf[:size]
	n, err := r.r.ReadAt(r.buf, off)
	r.buf, r.start = r.buf[:n], off
	if n < need {
		if err == nil || err == io.EOF {
			return errShort
		}
		return err
	}
	return nil
}

// segName is the file name of the segment whose first record is base.
func segName(base uint64) string {
	return fmt.Sprintf("%s%020d%s", segPrefix, base, segSuffix)
}

// parseSegName is segName's inverse.
func parseSegName(name string) (uint64, bool) {
	s, ok := strings.CutPrefix(name, segPrefix)
	if !ok {
		return 0, false
	}
	if s, ok = strings.CutSuffix(s, segSuffix); !ok || len(s) != 20 {
		return 0, false
	}
	base, err := strconv.ParseUint(s, 10, 64)
	return base, err == nil && base > 0 && base <= maxSeq
}

// encodeAck is the content of an acknowledgement file saying next.
func encodeAck(next uint64) []byte {
	b := make([]byte, 0, ackLen)
	b = append(b, ackMagic...)
	b = binary.BigEndian.AppendUint64(b, next)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// decodeAck is encodeAck's inverse.
func decodeAck(b []byte) (uint64, error) {
	if len(b) != ackLen || string(b[:len(ackMagic)]) != ackMagic {
		return 0, errCorrupt
	}
	body := b[:ackLen-4]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[ackLen-4:]) {
		return 0, errCorrupt
	}
	next := binary.BigEndian.Uint64(body[len(ackMagic):])
	if next == 0 || next > maxSeq {
		return 0, errCorrupt
	}
	return next, nil
}

// writeAck replaces path's content with next's, durably.
func writeAck(path string, next uint64) error {
	tmp := path + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(encodeAck(next))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncDir makes the directory's entries (created, renamed, removed files)
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
