package node

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/vigil-iot/vigil/raft"
)

// readSecret reads a file that must not be readable by group or others.
func readSecret(path string) ([]byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %#o); run chmod 600 %s", path, info.Mode().Perm(), path)
	}
	return os.ReadFile(path)
}

func writeSecret(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// GenerateClusterKey writes a new random cluster key to path.
func GenerateClusterKey(path string) error {
	return writeSecret(path, []byte(randomToken()+"\n"))
}

// GenerateTokenFile writes a token file with one token for name.
func GenerateTokenFile(path, name string) error {
	return writeSecret(path, []byte("# Vigil API tokens, one \"name:token\" per line. Keep this file secret.\n"+name+":"+randomToken()+"\n"))
}

// loadClusterKey reads the cluster key, generating it when this member is
// about to found a new cluster.
func loadClusterKey(path string, mayCreate bool) ([]byte, error) {
	data, err := readSecret(path)
	if errors.Is(err, fs.ErrNotExist) {
		if !mayCreate {
			return nil, fmt.Errorf("cluster key %s does not exist: a joining member needs the key of the cluster it joins "+
				"(copy cluster.key from a member's data dir and pass --cluster-key-file)", path)
		}
		if err := GenerateClusterKey(path); err != nil {
			return nil, fmt.Errorf("create cluster key: %w", err)
		}
		data, err = readSecret(path)
	}
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	key, err := base64.RawURLEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("cluster key %s is not base64url text: %w", path, err)
	}
	if len(key) < raft.MinClusterKeyLen {
		return nil, fmt.Errorf("cluster key %s holds %d bytes; at least %d are required", path, len(key), raft.MinClusterKeyLen)
	}
	return key, nil
}
