package topology

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalid marks a document that decodes but breaks a rule of vigil/v1.
// Every *ValidationError wraps it.
var ErrInvalid = errors.New("invalid topology document")

// FieldError is one broken rule, at a path such as "devices[12].class".
type FieldError struct {
	Path    string `json:"path"`
	Line    int    `json:"line,omitempty"`
	Message string `json:"message"`
}

func (e FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: %s: %s", e.Line, e.Path, e.Message)
	}
	if e.Path == "" {
		return e.Message
	}
	return e.Path + ": " + e.Message
}

// ValidationError lists every problem found in a document, in document order.
type ValidationError struct {
	Errors []FieldError
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d error", ErrInvalid, len(e.Errors))
	if len(e.Errors) != 1 {
		b.WriteByte('s')
	}
	for _, fe := range e.Errors {
		b.WriteString("\n  ")
		b.WriteString(fe.Error())
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Unwrap() error { return ErrInvalid }
