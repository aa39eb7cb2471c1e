package attest

// A TCG PC Client crypto-agile binary event log (TCG PC Client Platform
// Firmware Profile, "Event Logging"), the format of
// /sys/kernel/security/tpm0/binary_bios_measurements: all little-endian,
//
//	TCG_PCClientPCREvent (SHA-1 format) header, eventType EV_NO_ACTION, whose
//	  event is a TCG_EfiSpecIDEvent, signature "Spec ID Event03", listing the
//	  digest algorithms and sizes of the entries that follow;
//	TCG_PCR_EVENT2 entries: pcrIndex, eventType, TPML_DIGEST_VALUES (count,
//	  then per algorithm its id and digest), eventSize, event.
//
// What the verifier takes from it: each entry's SHA-256 digest, extended
// into its PCR in order; EV_NO_ACTION entries are not extended, except that
// a "StartupLocality" one sets PCR 0's initial value (31 zero bytes and the
// locality). The firmware measurement is the entry of type EV_POST_CODE
// (0x1), EV_EFI_PLATFORM_FIRMWARE_BLOB (0x80000008) or
// EV_EFI_PLATFORM_FIRMWARE_BLOB2 (0x8000000A) in one of the class's PCRs,
// and there must be exactly one there (so a class whose PCRs include PCR 0
// of a UEFI machine, which logs many firmware blobs, is not served).

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// TCG event types the verifier reads.
const (
	tcgEVPostCode                  = 0x00000001
	tcgEVNoAction                  = 0x00000003
	tcgEVIPL                       = 0x0000000d
	tcgEVEFIPlatformFirmwareBlob   = 0x80000008
	tcgEVEFIPlatformFirmwareBlob2  = 0x8000000a
	tcgSpecIDSignature             = "Spec ID Event03\x00"
	tcgStartupLocalitySignature    = "StartupLocality\x00"
	maxTCGAlgorithms               = 16
	maxTCGDigestSize               = 128
	tcgSHA1Size                    = 20
	tcgSpecIDMinSize               = 16 + 4 + 4 + 4 + 1 // signature .. numberOfAlgorithms, vendorInfoSize
	tcgStartupLocalityEventSize    = 17
	tcgMaxStartupLocality          = 4
	tcgSpecVersionMajorCryptoAgile = 2
)

// tcgIsFirmware reports whether an event type measures firmware.
func tcgIsFirmware(typ uint32) bool {
	return typ == tcgEVPostCode || typ == tcgEVEFIPlatformFirmwareBlob || typ == tcgEVEFIPlatformFirmwareBlob2
}

// tcgAlg is a digest algorithm of the log and its digest size.
type tcgAlg struct {
	ID   uint16
	Size int
}

// tcgEvent is one TCG_PCR_EVENT2 entry, its SHA-256 digest only.
type tcgEvent struct {
	PCR    int
	Type   uint32
	SHA256 [32]byte
}

// tcgEventLog is a parsed crypto-agile log.
type tcgEventLog struct {
	Algs   []tcgAlg
	Events []tcgEvent
	// Locality is the startup locality of PCR 0, -1 when the log names none.
	Locality int
}

// tcgReader reads little-endian fields; the first error sticks.
type tcgReader struct {
	b   []byte
	off int
	err error
}

func (r *tcgReader) take(n int, field string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.err = fmt.Errorf("the binary event log is truncated at byte %d: %s needs %d bytes, %d are left", r.off, field, n, len(r.b)-r.off)
		return nil
	}
	v := r.b[r.off : r.off+n : r.off+n]
	r.off += n
	return v
}

func (r *tcgReader) u8(field string) uint8 {
	if b := r.take(1, field); b != nil {
		return b[0]
	}
	return 0
}

func (r *tcgReader) u16(field string) uint16 {
	if b := r.take(2, field); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (r *tcgReader) u32(field string) uint32 {
	if b := r.take(4, field); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

// parseTCGEventLog parses a crypto-agile binary event log, bounded: at most
// MaxTPM2BinaryEventLogBytes bytes and MaxTPM2Events entries, every size
// checked against what is left, every entry with exactly one SHA-256 digest.
func parseTCGEventLog(b []byte) (*tcgEventLog, error) {
	if len(b) > MaxTPM2BinaryEventLogBytes {
		return nil, fmt.Errorf("the binary event log is %d bytes; at most %d are accepted", len(b), MaxTPM2BinaryEventLogBytes)
	}
	r := &tcgReader{b: b}
	log := &tcgEventLog{Locality: -1}

	// The TCG_PCClientPCREvent header and its TCG_EfiSpecIDEvent.
	pcr := r.u32("the header's pcrIndex")
	typ := r.u32("the header's eventType")
	r.take(tcgSHA1Size, "the header's digest")
	size := r.u32("the header's eventDataSize")
	if r.err != nil {
		return nil, r.err
	}
	if pcr != 0 || typ != tcgEVNoAction {
		return nil, fmt.Errorf("the binary event log does not start with a Spec ID event (PCR %d, type 0x%x; want PCR 0, EV_NO_ACTION)", pcr, typ)
	}
	if size < tcgSpecIDMinSize || int64(size) > int64(len(b)-r.off) {
		return nil, fmt.Errorf("the binary event log's Spec ID event is %d bytes, which does not fit", size)
	}
	spec := &tcgReader{b: r.take(int(size), "the Spec ID event")}
	if sig := spec.take(16, "signature"); !bytes.Equal(sig, []byte(tcgSpecIDSignature)) {
		return nil, fmt.Errorf("the binary event log is not crypto-agile: its Spec ID signature is %q, not %q", bytes.TrimRight(sig, "\x00"), "Spec ID Event03")
	}
	spec.u32("platformClass")
	spec.u8("specVersionMinor")
	if major := spec.u8("specVersionMajor"); spec.err == nil && major != tcgSpecVersionMajorCryptoAgile {
		return nil, fmt.Errorf("the binary event log's Spec ID event has version %d; want %d", major, tcgSpecVersionMajorCryptoAgile)
	}
	spec.u8("specErrata")
	spec.u8("uintnSize")
	n := spec.u32("numberOfAlgorithms")
	if spec.err == nil && (n == 0 || n > maxTCGAlgorithms) {
		return nil, fmt.Errorf("the binary event log names %d digest algorithms; 1 to %d are accepted", n, maxTCGAlgorithms)
	}
	hasSHA256 := false
	for i := 0; spec.err == nil && i < int(n); i++ {
		a := tcgAlg{ID: spec.u16("algorithmId"), Size: int(spec.u16("digestSize"))}
		if spec.err != nil {
			break
		}
		if bank, known := tpmBanks[a.ID]; known && bank.size != a.Size || a.Size == 0 || a.Size > maxTCGDigestSize {
			return nil, fmt.Errorf("the binary event log gives algorithm 0x%04x a digest size of %d", a.ID, a.Size)
		}
		for _, o := range log.Algs {
			if o.ID == a.ID {
				return nil, fmt.Errorf("the binary event log names algorithm 0x%04x twice", a.ID)
			}
		}
		hasSHA256 = hasSHA256 || a.ID == tpmAlgSHA256
		log.Algs = append(log.Algs, a)
	}
	vendor := int(spec.u8("vendorInfoSize"))
	spec.take(vendor, "vendorInfo")
	if spec.err != nil {
		return nil, fmt.Errorf("the binary event log's Spec ID event: %w", spec.err)
	}
	if spec.off != len(spec.b) {
		return nil, fmt.Errorf("the binary event log's Spec ID event has %d bytes after its vendorInfo", len(spec.b)-spec.off)
	}
	if !hasSHA256 {
		return nil, fmt.Errorf("the binary event log has no SHA-256 digests")
	}

	// The TCG_PCR_EVENT2 entries.
	extended0 := false
	for r.off < len(b) {
		if len(log.Events) == MaxTPM2Events {
			return nil, fmt.Errorf("the binary event log has more than %d events", MaxTPM2Events)
		}
		i := len(log.Events)
		e := tcgEvent{PCR: int(r.u32("pcrIndex")), Type: r.u32("eventType")}
		count := r.u32("digests.count")
		if r.err != nil {
			return nil, fmt.Errorf("event %d: %w", i, r.err)
		}
		if e.PCR < 0 || e.PCR >= TPM2PCRs {
			return nil, fmt.Errorf("event %d of the binary event log names PCR %d, which does not exist (0 to %d)", i, e.PCR, TPM2PCRs-1)
		}
		if count == 0 || count > uint32(len(log.Algs)) {
			return nil, fmt.Errorf("event %d of the binary event log has %d digests; the log names %d algorithms", i, count, len(log.Algs))
		}
		seen := map[uint16]bool{}
		for j := 0; j < int(count); j++ {
			id := r.u16("digests.hashAlg")
			if r.err != nil {
				return nil, fmt.Errorf("event %d: %w", i, r.err)
			}
			size := 0
			for _, a := range log.Algs {
				if a.ID == id {
					size = a.Size
				}
			}
			if size == 0 {
				return nil, fmt.Errorf("event %d of the binary event log has a digest of algorithm 0x%04x, which its header does not name", i, id)
			}
			if seen[id] {
				return nil, fmt.Errorf("event %d of the binary event log has two digests of algorithm 0x%04x", i, id)
			}
			seen[id] = true
			d := r.take(size, "digest")
			if id == tpmAlgSHA256 && d != nil {
				e.SHA256 = [32]byte(d)
			}
		}
		if !seen[tpmAlgSHA256] {
			return nil, fmt.Errorf("event %d of the binary event log has no SHA-256 digest", i)
		}
		data := r.take(int(r.u32("eventSize")), "event")
		if r.err != nil {
			return nil, fmt.Errorf("event %d: %w", i, r.err)
		}
		if e.Type == tcgEVNoAction {
			if e.PCR == 0 && len(data) == tcgStartupLocalityEventSize && bytes.HasPrefix(data, []byte(tcgStartupLocalitySignature)) {
				if extended0 || log.Locality >= 0 {
					return nil, fmt.Errorf("event %d of the binary event log sets PCR 0's startup locality after PCR 0 was extended or its locality set", i)
				}
				if data[16] > tcgMaxStartupLocality {
					return nil, fmt.Errorf("event %d of the binary event log names startup locality %d", i, data[16])
				}
				log.Locality = int(data[16])
			}
		} else if e.PCR == 0 {
			extended0 = true
		}
		log.Events = append(log.Events, e)
	}
	return log, nil
}

// replayEvents are the log's events as the replay takes them.
func (l *tcgEventLog) replayEvents() []replayEvent {
	out := make([]replayEvent, 0, len(l.Events)+1)
	if l.Locality >= 0 {
		var init [32]byte
		init[31] = byte(l.Locality)
		out = append(out, replayEvent{PCR: 0, SHA256: init, Initial: true})
	}
	for _, e := range l.Events {
		if e.Type == tcgEVNoAction {
			continue
		}
		out = append(out, replayEvent{PCR: e.PCR, SHA256: e.SHA256, Firmware: tcgIsFirmware(e.Type)})
	}
	return out
}

// appendTCGEventLog writes a crypto-agile log of SHA-256 digests only, with
// the Spec ID header (for the simulator and tests). Firmware events become
// EV_EFI_PLATFORM_FIRMWARE_BLOB2 (data: a UEFI_PLATFORM_FIRMWARE_BLOB2 whose
// description is "firmware"), the others EV_IPL (data: their type). The
// events' digests are valid hex (the simulator's own).
func appendTCGEventLog(b []byte, events []Event) []byte {
	le := binary.LittleEndian
	spec := []byte(tcgSpecIDSignature)
	spec = le.AppendUint32(spec, 0) // platformClass: client
	spec = append(spec, 0, tcgSpecVersionMajorCryptoAgile, 0, 2)
	spec = le.AppendUint32(spec, 1)
	spec = le.AppendUint16(spec, tpmAlgSHA256)
	spec = le.AppendUint16(spec, 32)
	spec = append(spec, 0) // vendorInfoSize

	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, tcgEVNoAction)
	b = append(b, make([]byte, tcgSHA1Size)...)
	b = le.AppendUint32(b, uint32(len(spec)))
	b = append(b, spec...)
	for _, e := range events {
		typ, data := uint32(tcgEVIPL), []byte(e.Type)
		if e.Type == EventFirmware {
			typ = tcgEVEFIPlatformFirmwareBlob2
			data = append([]byte{byte(len(EventFirmware))}, EventFirmware...)
			data = append(data, make([]byte, 16)...) // BlobBase, BlobLength
		}
		var digest [32]byte
		if len(e.SHA256) == 2*len(digest) {
			hex.Decode(digest[:], []byte(e.SHA256))
		}
		b = le.AppendUint32(b, uint32(e.PCR))
		b = le.AppendUint32(b, typ)
		b = le.AppendUint32(b, 1)
		b = le.AppendUint16(b, tpmAlgSHA256)
		b = append(b, digest[:]...)
		b = le.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	return b
}
