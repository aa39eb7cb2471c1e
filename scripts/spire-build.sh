#!/usr/bin/env bash
# Builds the real spire-server and spire-agent, at the SPIRE version pinned in
# tools/spire/go.mod, into a cache outside the repository, once; later calls
# (and later clones on the same machine) reuse it. Prints the directory that
# holds both binaries, and nothing else on stdout; build output goes to stderr.
#
#   dir=$(scripts/spire-build.sh) && "$dir/spire-server" run -config server.conf
#
# Environment:
#   VIGIL_SPIRE_CACHE  cache root (default: $HOME/.cache/vigil/spire); the
#                      binaries land in $VIGIL_SPIRE_CACHE/<version>/
#   GO                 the go command (default: go)
#
# A cold build takes about 10 minutes on 2 cores. spire-server needs cgo: its
# only local datastore, sqlite3, is mattn/go-sqlite3, and without cgo SPIRE
# compiles a stub: the server exits at start with "datastore-sql: sqlite3 is
# not a supported dialect when CGO is not enabled". So both binaries are built
# with CGO_ENABLED=1 (gcc needed), in one go build so that the packages they
# share compile once.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tooldir="$root/tools/spire"
GO="${GO:-go}"

version="$(awk '$1 == "github.com/spiffe/spire" { print $2; exit }' "$tooldir/go.mod")"
if [[ -z "$version" ]]; then
	echo "spire-build: no github.com/spiffe/spire requirement in $tooldir/go.mod" >&2
	exit 1
fi
dir="${VIGIL_SPIRE_CACHE:-$HOME/.cache/vigil/spire}/$version"

have() { [[ -x "$dir/spire-server" && -x "$dir/spire-agent" ]]; }

if have; then
	echo "$dir"
	exit 0
fi

command -v flock >/dev/null || { echo "spire-build: flock (util-linux) is required" >&2; exit 1; }
mkdir -p "$dir"
# One builder at a time; whoever waited finds the binaries already there.
exec 9>"$dir/.lock"
flock 9
if ! have; then
	# Build next to the final paths (same file system), then rename: a build
	# that is interrupted leaves no binary behind, only a .build.* directory,
	# which the next builder (holding the lock) removes.
	rm -rf "$dir"/.build.*
	tmp="$(mktemp -d "$dir/.build.XXXXXX")"
	trap 'rm -rf "$tmp"' EXIT
	echo "spire-build: building spire-server and spire-agent $version into $dir (about 10 minutes cold)" >&2
	start=$SECONDS
	(
		cd "$tooldir"
		GOWORK=off CGO_ENABLED=1 "$GO" build -mod=readonly -trimpath \
			-ldflags "-X github.com/spiffe/spire/pkg/common/version.gittag=${version#v}" \
			-o "$tmp/" \
			github.com/spiffe/spire/cmd/spire-server \
			github.com/spiffe/spire/cmd/spire-agent
	) >&2 9>&-
	# The server goes last: "have" needs both, so a stop between the two
	# renames only means the next call builds again.
	mv -f "$tmp/spire-agent" "$dir/spire-agent"
	mv -f "$tmp/spire-server" "$dir/spire-server"
	echo "spire-build: built in $((SECONDS - start))s" >&2
fi
echo "$dir"
