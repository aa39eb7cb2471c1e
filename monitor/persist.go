package monitor

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/vigil-iot/vigil/topology"
)

// Checkpoint format (little endian), so that baselines survive restarts:
//
//	"VIGILMON" version:u32 epoch:i64
//	classes:u32 { name:str rate,volume,size:ewma rateN,volumeN,sizeN:u64 firstSeen:i64 seen:[256]u64 }
//	subjects:u32 { kind:u8 name:str class:str win:i64 windows:u32 firing:u16 rate,volume,size:ewma
//	               quiet:[12]u32 quietSv:[12]u8 seen:[8]u64 }
//	risks:u32 { kind:u8 name:str json:str }   (class, findings, published, pubAt)
//	crc32c of everything before:u32
//
// with str a u32 length and bytes, ewma two float32. The current
// window's counters are not kept: a restart starts a new window.
const (
	checkpointMagic   = "VIGILMON"
	checkpointVersion = 1
	maxCheckpointStr  = 1 << 20
)

type riskJSON struct {
	Class     string             `json:"class"`
	Findings  []topology.Finding `json:"findings"`
	Published int                `json:"published"`
	PubAt     int64              `json:"pubAt"`
}

type cpWriter struct {
	w   *bufio.Writer
	crc uint32
	err error
	buf [8]byte
}

func (c *cpWriter) bytes(b []byte) {
	if c.err != nil {
		return
	}
	c.crc = crc32.Update(c.crc, crcTable, b)
	_, c.err = c.w.Write(b)
}
func (c *cpWriter) u8(v uint8)   { c.bytes([]byte{v}) }
func (c *cpWriter) u16(v uint16) { binary.LittleEndian.PutUint16(c.buf[:2], v); c.bytes(c.buf[:2]) }
func (c *cpWriter) u32(v uint32) { binary.LittleEndian.PutUint32(c.buf[:4], v); c.bytes(c.buf[:4]) }
func (c *cpWriter) u64(v uint64) { binary.LittleEndian.PutUint64(c.buf[:8], v); c.bytes(c.buf[:8]) }
func (c *cpWriter) str(s string) { c.u32(uint32(len(s))); c.bytes([]byte(s)) }
func (c *cpWriter) ewma(e ewma) {
	c.u32(math.Float32bits(e.Mean))
	c.u32(math.Float32bits(e.Var))
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Save writes the engine's baselines and risk to w.
func (e *Engine) Save(w io.Writer) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := &cpWriter{w: bufio.NewWriterSize(w, 1<<16)}
	c.bytes([]byte(checkpointMagic))
	c.u32(checkpointVersion)
	c.u64(uint64(e.epoch))
	c.u32(uint32(len(e.class)))
	for name, cs := range e.class {
		c.str(name)
		c.ewma(cs.rate)
		c.ewma(cs.volume)
		c.ewma(cs.size)
		c.u64(cs.rateN)
		c.u64(cs.volumeN)
		c.u64(cs.sizeN)
		c.u64(uint64(cs.firstSeen))
		for _, v := range cs.seen {
			c.u64(v)
		}
	}
	c.u32(uint32(len(e.devs)))
	for s, d := range e.devs {
		c.u8(uint8(s.Kind))
		c.str(s.Name)
		c.str(d.class)
		c.u64(uint64(d.win))
		c.u32(d.windows)
		c.u16(d.firing)
		c.ewma(d.rate)
		c.ewma(d.volume)
		c.ewma(d.size)
		for _, v := range d.quiet {
			c.u32(v)
		}
		for _, v := range d.quietSv {
			c.u8(v)
		}
		for _, v := range d.seen {
			c.u64(v)
		}
	}
	c.u32(uint32(len(e.risks)))
	for s, r := range e.risks {
		b, err := json.Marshal(riskJSON{Class: r.class, Findings: r.findings, Published: r.published, PubAt: r.pubAt})
		if err != nil {
			return err
		}
		c.u8(uint8(s.Kind))
		c.str(s.Name)
		c.str(string(b))
	}
	if c.err != nil {
		return c.err
	}
	crc := c.crc
	binary.LittleEndian.PutUint32(c.buf[:4], crc)
	if _, err := c.w.Write(c.buf[:4]); err != nil {
		return err
	}
	return c.w.Flush()
}

type cpReader struct {
	r   *bufio.Reader
	crc uint32
	err error
	buf [8]byte
}

func (c *cpReader) read(n int) []byte {
	if c.err != nil {
		return c.buf[:n]
	}
	if _, err := io.ReadFull(c.r, c.buf[:n]); err != nil {
		c.err = fmt.Errorf("checkpoint is truncated: %w", err)
	}
	c.crc = crc32.Update(c.crc, crcTable, c.buf[:n])
	return c.buf[:n]
}
func (c *cpReader) u8() uint8   { return c.read(1)[0] }
func (c *cpReader) u16() uint16 { return binary.LittleEndian.Uint16(c.read(2)) }
func (c *cpReader) u32() uint32 { return binary.LittleEndian.Uint32(c.read(4)) }
func (c *cpReader) u64() uint64 { return binary.LittleEndian.Uint64(c.read(8)) }
func (c *cpReader) str() string {
	n := c.u32()
	if c.err != nil {
		return ""
	}
	if n > maxCheckpointStr {
		c.err = fmt.Errorf("checkpoint holds a string of %d bytes", n)
		return ""
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		c.err = fmt.Errorf("checkpoint is truncated: %w", err)
		return ""
	}
	c.crc = crc32.Update(c.crc, crcTable, b)
	return string(b)
}
func (c *cpReader) ewma() ewma {
	m := math.Float32frombits(c.u32())
	v := math.Float32frombits(c.u32())
	return ewma{Mean: m, Var: v}
}

// maxCheckpointCount bounds the entries a checkpoint may claim, so a
// corrupt count cannot make Load allocate without end.
const maxCheckpointCount = 1 << 26

// Load replaces the engine's baselines and risk with a checkpoint's. On
// any error the engine is left as it was.
func (e *Engine) Load(r io.Reader) error {
	c := &cpReader{r: bufio.NewReaderSize(r, 1<<16)}
	if string(c.read(8)) != checkpointMagic || c.err != nil {
		return errors.New("not a monitor checkpoint")
	}
	if v := c.u32(); v != checkpointVersion {
		return fmt.Errorf("monitor checkpoint version %d; this build reads %d", v, checkpointVersion)
	}
	epoch := int64(c.u64())
	classes := make(map[string]*classState)
	n := c.u32()
	if n > maxCheckpointCount {
		return fmt.Errorf("monitor checkpoint claims %d classes", n)
	}
	for i := uint32(0); i < n && c.err == nil; i++ {
		name := c.str()
		cs := &classState{rate: c.ewma(), volume: c.ewma(), size: c.ewma(), rateN: c.u64(), volumeN: c.u64(), sizeN: c.u64(),
			firstSeen: int64(c.u64()), seen: make(bloom, classBloomWords)}
		for j := range cs.seen {
			cs.seen[j] = c.u64()
		}
		classes[name] = cs
	}
	devs := make(map[topology.Subject]*devState)
	n = c.u32()
	if n > maxCheckpointCount {
		return fmt.Errorf("monitor checkpoint claims %d subjects", n)
	}
	for i := uint32(0); i < n && c.err == nil; i++ {
		s := topology.Subject{Kind: topology.Kind(c.u8()), Name: c.str()}
		d := &devState{class: c.str(), win: int64(c.u64()), windows: c.u32(), firing: c.u16(), rate: c.ewma(), volume: c.ewma(), size: c.ewma()}
		for j := range d.quiet {
			d.quiet[j] = c.u32()
		}
		for j := range d.quietSv {
			d.quietSv[j] = c.u8()
		}
		for j := range d.seen {
			d.seen[j] = c.u64()
		}
		devs[s] = d
	}
	risks := make(map[topology.Subject]*riskState)
	n = c.u32()
	if n > maxCheckpointCount {
		return fmt.Errorf("monitor checkpoint claims %d risks", n)
	}
	for i := uint32(0); i < n && c.err == nil; i++ {
		s := topology.Subject{Kind: topology.Kind(c.u8()), Name: c.str()}
		var rj riskJSON
		if raw := c.str(); c.err == nil {
			if err := json.Unmarshal([]byte(raw), &rj); err != nil {
				return fmt.Errorf("monitor checkpoint: risk of %s: %w", s, err)
			}
		}
		if len(rj.Findings) > maxRiskFindings {
			rj.Findings = rj.Findings[len(rj.Findings)-maxRiskFindings:]
		}
		risks[s] = &riskState{class: rj.Class, findings: rj.Findings, published: rj.Published, pubAt: rj.PubAt}
	}
	want := c.crc
	got := c.u32()
	if c.err != nil {
		return c.err
	}
	if got != want {
		return errors.New("monitor checkpoint checksum mismatch")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.class, e.devs, e.risks = classes, devs, risks
	// Suppression times count from the checkpoint's epoch.
	e.epoch = epoch
	return nil
}

// SaveFile writes the checkpoint atomically (temporary file, fsync,
// rename).
func (e *Engine) SaveFile(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".monitor-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := e.Save(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("monitor checkpoint: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// LoadFile loads a checkpoint written by SaveFile; a missing file is no
// error (a new member).
func (e *Engine) LoadFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := e.Load(f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
