package main

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/vigil-iot/vigil/node"
)

// registerDebugClock adds the hidden --debug-clock-offset: the member's
// wall clock, for everything it decides and records with, shifted by a
// duration (node.OffsetClock). For fault tests: a member whose clock is far
// ahead or behind its peers'. Raft's timers are not affected.
func registerDebugClock(f *pflag.FlagSet, cfg *node.Config) {
	f.Var(&clockOffsetFlag{cfg: cfg}, "debug-clock-offset", "shift this member's wall clock by this duration (e.g. 2h, -90m) for everything it decides and records with; fault tests only")
	_ = f.MarkHidden("debug-clock-offset")
}

// clockOffsetFlag sets cfg.Clock from a duration.
type clockOffsetFlag struct {
	cfg *node.Config
	d   time.Duration
}

func (f *clockOffsetFlag) String() string { return f.d.String() }
func (f *clockOffsetFlag) Type() string   { return "duration" }
func (f *clockOffsetFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	f.d = d
	f.cfg.Clock = node.OffsetClock(d)
	return nil
}
