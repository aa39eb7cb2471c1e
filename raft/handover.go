package raft

import "fmt"

// HandOver makes another voter lead in this member's place when this
// member leads: raft's leadership transfer brings the most up-to-date
// follower level with the log and tells it to stand for election at once,
// so the cluster does not wait out an election timeout. A member that can
// no longer write its log (its disk is full) hands over so that the others
// keep taking writes. It returns when the transfer is done or has failed
// (raft bounds it by the election timeout), and nil at once when this
// member does not lead.
func (s *Store) HandOver() error {
	if !s.IsLeader() {
		return nil
	}
	if err := s.raft.LeadershipTransfer().Error(); err != nil {
		return fmt.Errorf("raft: hand the leadership over: %w", err)
	}
	return nil
}
