package raft

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/vigil-iot/vigil/topology"
)

const snapshotFormat = 1

// snapshotImage is the persisted form of the state machine.
type snapshotImage struct {
	Format      int                `json:"format"`
	Revision    topology.Revision  `json:"revision"`
	DocRevision topology.Revision  `json:"docRevision"`
	LastIndex   uint64             `json:"lastIndex"`
	Document    *topology.Document `json:"document,omitempty"`
	State       []subjectEntry     `json:"state"`
	Members     []Member           `json:"members"`
	Pending     []pendingImage     `json:"pending,omitempty"`
	// Checkpoints are the members' decision-log checkpoints, by member ID
	// (absent from images written before they existed).
	Checkpoints []checkpointImage `json:"checkpoints,omitempty"`
	// Nonces are the attestation nonces used and not yet expired, and
	// NoncesForgotten the latest expiry of one forgotten (usedNonces).
	Nonces          []nonceUse `json:"nonces,omitempty"`
	NoncesForgotten time.Time  `json:"noncesForgotten,omitzero"`
	// Incidents are the monitor's incidents, in the order opened.
	Incidents []*topology.Incident `json:"incidents,omitempty"`
}

type checkpointImage struct {
	Node        string               `json:"node"`
	Checkpoints []RecordedCheckpoint `json:"checkpoints"`
}

type subjectEntry struct {
	Subject topology.Subject       `json:"subject"`
	State   *topology.SubjectState `json:"state"`
}

type pendingImage struct {
	Txn        string   `json:"txn"`
	FirstIndex uint64   `json:"firstIndex"`
	Total      int      `json:"total"`
	SHA256     string   `json:"sha256"`
	Chunks     [][]byte `json:"chunks"`
}

// fsmSnapshot holds immutable references taken at Snapshot time; Persist
// runs concurrently with Apply.
type fsmSnapshot struct {
	image snapshotImage
	state *topology.State
}

// Snapshot captures the current state. It is cheap: everything it refers
// to is immutable, and the heavy work happens in Persist.
func (f *fsm) Snapshot() (hraft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := f.current()
	img := snapshotImage{
		Format:      snapshotFormat,
		Revision:    cur.Revision(),
		DocRevision: cur.DocumentRevision(),
		LastIndex:   f.lastIndex,
		Members:     slices.SortedFunc(maps.Values(f.members), func(a, b Member) int { return strings.Compare(a.ID, b.ID) }),
		Nonces:      f.nonces.image(),
		Incidents:   f.incidents.image(),
	}
	img.NoncesForgotten = f.nonces.forgotten
	if cur.HasDocument() {
		img.Document = cur.Index().Document()
	}
	for _, node := range slices.Sorted(maps.Keys(f.checkpoints)) {
		// The slices are never modified once recorded (checkpointLog.add).
		img.Checkpoints = append(img.Checkpoints, checkpointImage{Node: node, Checkpoints: f.checkpoints[node]})
	}
	for _, txn := range slices.Sorted(maps.Keys(f.pending)) {
		p := f.pending[txn]
		img.Pending = append(img.Pending, pendingImage{
			Txn: txn, FirstIndex: p.firstIndex, Total: p.total, SHA256: p.sha, Chunks: slices.Clone(p.chunks),
		})
	}
	return &fsmSnapshot{image: img, state: cur.State()}, nil
}

// Persist writes the image as gzip-compressed JSON.
func (s *fsmSnapshot) Persist(sink hraft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) write(w io.Writer) error {
	img := s.image
	img.State = make([]subjectEntry, 0, s.state.Len())
	s.state.Range(func(sub topology.Subject, st *topology.SubjectState) bool {
		img.State = append(img.State, subjectEntry{sub, st})
		return true
	})
	slices.SortFunc(img.State, func(a, b subjectEntry) int {
		return strings.Compare(a.Subject.String(), b.Subject.String())
	})
	bw := bufio.NewWriterSize(w, 1<<20)
	zw, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		return err
	}
	if err := json.NewEncoder(zw).Encode(&img); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

func (s *fsmSnapshot) Release() {}

// Restore replaces the whole state with a persisted image. The image is
// fully decoded and validated before anything is swapped in.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	img, snap, err := readImage(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	members := make(map[string]Member, len(img.Members))
	for _, m := range img.Members {
		members[m.ID] = m
	}
	checkpoints := make(map[string]checkpointLog, len(img.Checkpoints))
	for _, c := range img.Checkpoints {
		if len(c.Checkpoints) == 0 || len(c.Checkpoints) > maxCheckpoints {
			return fmt.Errorf("restore snapshot: member %s has %d checkpoints", c.Node, len(c.Checkpoints))
		}
		checkpoints[c.Node] = checkpointLog(c.Checkpoints)
	}
	pending := make(map[string]*pendingDocument, len(img.Pending))
	for _, p := range img.Pending {
		if p.Total < 1 || len(p.Chunks) != p.Total {
			return fmt.Errorf("restore snapshot: pending document %s has %d chunk slots for %d chunks", p.Txn, len(p.Chunks), p.Total)
		}
		pd := &pendingDocument{firstIndex: p.FirstIndex, total: p.Total, sha: p.SHA256, chunks: p.Chunks}
		for _, c := range p.Chunks {
			if c != nil {
				pd.received++
			}
		}
		pending[p.Txn] = pd
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.members, f.checkpoints, f.pending, f.lastIndex = members, checkpoints, pending, img.LastIndex
	f.nonces = restoreNonces(img.Nonces, img.NoncesForgotten)
	f.incidents = restoreIncidents(img.Incidents)
	f.publish(Event{Snapshot: snap, Restored: true, Document: true})
	return nil
}

func readImage(r io.Reader) (*snapshotImage, *topology.Snapshot, error) {
	zr, err := gzip.NewReader(bufio.NewReaderSize(r, 1<<20))
	if err != nil {
		return nil, nil, err
	}
	var img snapshotImage
	dec := json.NewDecoder(zr)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&img); err != nil {
		return nil, nil, err
	}
	if img.Format != snapshotFormat {
		return nil, nil, fmt.Errorf("snapshot format %d; this build reads format %d", img.Format, snapshotFormat)
	}
	ix := topology.EmptyIndex()
	if img.Document != nil {
		if ix, err = topology.NewIndex(img.Document); err != nil {
			return nil, nil, err
		}
	}
	updates := make(map[topology.Subject]*topology.SubjectState, len(img.State))
	for _, e := range img.State {
		updates[e.Subject] = e.State
	}
	snap := topology.NewSnapshot(img.Revision, img.DocRevision, ix, topology.NewState().With(updates))
	return &img, snap, nil
}
