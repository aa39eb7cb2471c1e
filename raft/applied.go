package raft

import (
	"encoding/json"
	"os"
	"path/filepath"
	"time"

	hraft "github.com/hashicorp/raft"
)

// The applied mark: what a member had applied, kept across restarts.
//
// hashicorp/raft restores a restarted member's latest snapshot and applies
// the entries after it only once a leader tells it they are committed. A
// member that restarts while cut off from its quorum would therefore hold
// its snapshot, which may be older than the state it enforced before (and
// predate a quarantine), until the partition heals. Vigil never serves a
// state older than one it has served: the member notes, a few times a
// second, the last index it applied and when it last heard from a leader;
// at start it re-applies its own log up to that index, entries it knows
// were committed because it applied them before. The state machine skips
// an entry it already holds, so raft applying the same entries later
// changes nothing.
//
// The mark is written without fsync: a mark lost to a power failure is
// older than the truth, which is safe (the member then waits for a leader,
// as before). It can never be newer than what the log holds, since raft
// stores an entry durably before applying it.

const appliedFile = "applied.json"

// markInterval is how often the mark is brought up to date.
const markInterval = 200 * time.Millisecond

// appliedMark is the content of applied.json.
type appliedMark struct {
	Index       uint64    `json:"index"`
	LastContact time.Time `json:"lastContact,omitzero"`
}

func readMark(dir string) appliedMark {
	var m appliedMark
	data, err := os.ReadFile(filepath.Join(dir, appliedFile))
	if err == nil && json.Unmarshal(data, &m) != nil {
		m = appliedMark{} // torn by a crash: no mark
	}
	return m
}

func writeMark(dir string, m appliedMark) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	path := filepath.Join(dir, appliedFile)
	if err := os.WriteFile(path+".tmp", data, 0o600); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// Resumed says what a restarted member recovered from its own log before
// any leader spoke to it: the index it had applied before it stopped, now
// applied again (zero when it could not resume: no mark, or its log fell
// short), and when it last heard from a leader before it stopped.
type Resumed struct {
	Index       uint64
	LastContact time.Time
}

// Resumed reports what Open recovered (see applied.go).
func (s *Store) Resumed() Resumed { return s.resumed }

// replayOwn re-applies this member's own log up to its applied mark.
func (s *Store) replayOwn(logs hraft.LogStore) {
	m := readMark(s.cfg.DataDir)
	s.resumed.LastContact = m.LastContact
	from := s.fsm.appliedIndex() + 1
	n := 0
	for i := from; i <= m.Index; i++ {
		var l hraft.Log
		if err := logs.GetLog(i, &l); err != nil {
			s.cfg.Logger.Warn("raft: replaying this member's own log stopped early", "index", i, "mark", m.Index, "err", err)
			break
		}
		if l.Type == hraft.LogCommand {
			s.fsm.Apply(&l)
			n++
		}
	}
	if m.Index > 0 && s.fsm.appliedIndex() >= m.Index {
		s.resumed.Index = m.Index
		s.cfg.Logger.Info("raft: resumed the state this member had applied before it stopped",
			"index", m.Index, "replayed", n, "revision", s.Current().Revision())
	}
}

// keepMark brings the applied mark up to date until stop closes, then
// writes it a last time and closes done.
func (s *Store) keepMark(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(markInterval)
	defer t.Stop()
	last := appliedMark{Index: s.resumed.Index, LastContact: s.resumed.LastContact}
	for stopping := false; !stopping; {
		select {
		case <-stop:
			stopping = true
		case <-t.C:
		}
		m := appliedMark{Index: s.fsm.appliedIndex(), LastContact: s.LastContact()}
		if m.LastContact.IsZero() {
			m.LastContact = last.LastContact
		}
		if m.Index == last.Index && m.LastContact.Sub(last.LastContact) < time.Second {
			continue
		}
		if err := writeMark(s.cfg.DataDir, m); err != nil {
			s.cfg.Logger.Debug("raft: writing the applied mark failed", "err", err)
			continue
		}
		last = m
	}
}

// appliedIndex is the last log index the state machine applied.
func (f *fsm) appliedIndex() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastIndex
}
