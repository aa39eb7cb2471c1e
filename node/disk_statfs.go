//go:build linux || darwin

package node

import "syscall"

// statfs reports the bytes of dir's file system free to this process
// (unprivileged: the blocks a file system reserves for root are not
// counted) and its size.
func statfs(dir string) (free, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return uint64(st.Bavail) * uint64(st.Bsize), uint64(st.Blocks) * uint64(st.Bsize), nil
}
