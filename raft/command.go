package raft

import (
	"time"

	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"

	"github.com/vigil-iot/vigil/topology"
)

// commandType is the first byte of every log entry this package writes.
type commandType uint8

const (
	cmdDocumentChunk commandType = 1 // one chunk of a replacement document
	cmdState         commandType = 2 // a batch of runtime-state changes
	cmdMember        commandType = 3 // record a member's addresses
	cmdRemoveMember  commandType = 4 // forget a member
	cmdCheckpoint    commandType = 5 // record a member's signed decision-log head
	cmdIncident      commandType = 6 // open or update an incident
)

// commandVersions is the payload version each command type is written with.
// A replica that reads a type or version it does not know stops rather than
// guess: diverging replicas are worse than a halted one.
var commandVersions = map[commandType]uint8{
	cmdDocumentChunk: 1,
	cmdState:         1,
	cmdMember:        1,
	cmdRemoveMember:  1,
	cmdCheckpoint:    1,
	cmdIncident:      1,
}

// headerLen is type (1) + version (1) + CRC-32C of the payload (4).
const headerLen = 6

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// encodeCommand frames a payload: type, version, checksum, JSON.
func encodeCommand(t commandType, payload any) ([]byte, error) {
	body, err := json.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("encode command %d: %w", t, err)
	}
	buf := make([]byte, headerLen+len(body))
	buf[0] = byte(t)
	buf[1] = commandVersions[t]
	binary.BigEndian.PutUint32(buf[2:6], crc32.Checksum(body, crcTable))
	copy(buf[headerLen:], body)
	return buf, nil
}

// decodeHeader checks an entry's frame and returns its type and payload. An
// error here means the entry is corrupt or from a newer Vigil.
func decodeHeader(data []byte) (commandType, []byte, error) {
	if len(data) < headerLen {
		return 0, nil, fmt.Errorf("entry of %d bytes is shorter than its header", len(data))
	}
	t, v := commandType(data[0]), data[1]
	want, known := commandVersions[t]
	if !known {
		return 0, nil, fmt.Errorf("unknown command type %d", t)
	}
	if v != want {
		return 0, nil, fmt.Errorf("command type %d has version %d; this build reads version %d", t, v, want)
	}
	body := data[headerLen:]
	if got := crc32.Checksum(body, crcTable); got != binary.BigEndian.Uint32(data[2:6]) {
		return 0, nil, fmt.Errorf("command type %d: checksum mismatch", t)
	}
	return t, body, nil
}

// documentChunk is one piece of a gzip-compressed JSON document. A document
// larger than one chunk travels as several consecutive log entries sharing
// Txn; the last one to arrive makes the document take effect.
type documentChunk struct {
	Txn    string `json:"txn"`
	Seq    int    `json:"seq"`
	Total  int    `json:"total"`
	SHA256 string `json:"sha256"` // of the whole compressed document
	Data   []byte `json:"data"`
}

// Op names a runtime-state change.
type Op string

// The runtime-state changes a StateOp can make.
const (
	OpQuarantine       Op = "quarantine"
	OpRelease          Op = "release"
	OpSetRisk          Op = "risk"
	OpSetAttestation   Op = "attestation"
	OpClearAttestation Op = "clear-attestation"
	// OpEnroll replaces a device's enrolled attestation keys; its TPM
	// counters start again.
	OpEnroll Op = "enroll"
)

// StateOp is one change to one subject's runtime state. Exactly the payload
// its Op needs is set. Timestamps are chosen by the proposer, so that every
// replica applies the same values.
type StateOp struct {
	Subject     topology.Subject      `json:"subject"`
	Op          Op                    `json:"op"`
	Quarantine  *topology.Quarantine  `json:"quarantine,omitempty"`
	Risk        *topology.Risk        `json:"risk,omitempty"`
	Attestation *topology.Attestation `json:"attestation,omitempty"`
	Enrollment  *topology.Enrollment  `json:"enrollment,omitempty"`
	// Nonce, with OpSetAttestation, is the hex nonce the evidence answered
	// and NonceExpires its expiry: every replica refuses a nonce already
	// used (a replay), wherever the evidence was verified, and remembers it
	// until it expires. With OpQuarantine it is the ID of a quarantine a
	// member took locally while cut off from its quorum, proposed when the
	// partition healed: the same refusal makes it apply once, however
	// often it is proposed. No other operation carries one.
	Nonce        string    `json:"nonce,omitempty"`
	NonceExpires time.Time `json:"nonceExpires,omitzero"`
}

// stateBatch applies all of its operations or none.
type stateBatch struct {
	Ops []StateOp `json:"ops"`
}

// ValidMemberID reports whether id can name a member: 1-63 characters of
// a-z, 0-9, '-' and '_'.
func ValidMemberID(id string) bool {
	if id == "" || len(id) > 63 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Member is a cluster member's addresses as it registered them, and the
// public key its decision-log checkpoints are signed with (checkpoint.go).
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raftAddr"`
	APIAddr  string `json:"apiAddr"`
	// AuditKey is the member's ed25519 public key, standard base64
	// (EncodeAuditKey); empty for a member that signs no checkpoints.
	AuditKey string `json:"auditKey,omitempty"`
}

type removeMember struct {
	ID string `json:"id"`
}

func crc32Castagnoli(b []byte) uint32 { return crc32.Checksum(b, crcTable) }
