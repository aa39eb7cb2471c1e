//go:build !linux && !darwin

package node

import "errors"

// statfs is not known here: the data dir counts as full only when a
// write fails for lack of space.
func statfs(string) (free, total uint64, err error) {
	return 0, 0, errors.ErrUnsupported
}
