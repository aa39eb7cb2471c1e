//go:build !unix

package siem

import "os"

// lockDir opens the outbox's LOCK file; without flock, nothing stops a
// second process from opening the same outbox.
func lockDir(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}
