package siem

import (
	"context"
	"errors"
)

// Sink is a receiver the outbox delivers alerts to.
type Sink interface {
	// Name identifies the sink in the outbox (it names the sink's
	// acknowledgement file) and in logs: 1–64 of a-z, 0-9, '.', '_', '-',
	// starting with a letter or digit; unique within an outbox.
	Name() string
	// Deliver sends alerts, in order, and returns nil once the receiver
	// has them all. An error wrapped with [Permanent] says the receiver
	// refused the content and no retry would help (the outbox then sends
	// the batch's alerts one at a time and skips those refused); any other
	// error is retried. Deliver must return soon after ctx ends.
	Deliver(ctx context.Context, alerts []Alert) error
}

// Permanent marks err as the receiver's refusal of the content, which no
// retry can fix.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent reports whether err (or an error it wraps) came from
// [Permanent].
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

var (
	_ Sink = (*Syslog)(nil)
	_ Sink = (*Webhook)(nil)
	_ Sink = (*Alertmanager)(nil)
)
