#!/usr/bin/env bash
# Smoke test of the cached SPIRE build and the config templates in testdata/:
# starts spire-server, generates a join token, starts spire-agent with it,
# checks that the agent attested and serves an SVID, then stops both.
#
#   tools/spire/smoke.sh [DIR]   DIR holds spire-server and spire-agent
#                                (default: the output of scripts/spire-build.sh)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${1:-$("$here/../../scripts/spire-build.sh")}"
td=example.org

# Short base path: unix socket paths are limited to about 100 bytes.
tmp="$(mktemp -d /tmp/spire-smoke.XXXXXX)"
server_pid=""
agent_pid=""
# shellcheck disable=SC2317 # reached through the trap
cleanup() {
	local rc=$?
	set +e
	for pid in "$agent_pid" "$server_pid"; do
		[[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	done
	if ((rc != 0)); then
		echo "--- server log" >&2
		cat "$tmp/server.log" >&2
		echo "--- agent log" >&2
		cat "$tmp/agent.log" >&2
	fi
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT

free_port() {
	local p
	for _ in $(seq 50); do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	echo "smoke: no free port found" >&2
	return 1
}

# show prints a command line before it runs, as the README quotes them.
show() { echo "+ $*" >&2; }

wait_healthy() { # NAME CMD...
	local name=$1
	shift
	for _ in $(seq 100); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	echo "smoke: $name did not become healthy" >&2
	return 1
}

port="$(free_port)"
server_sock="$tmp/server/api.sock"
workload_sock="$tmp/workload/api.sock"
admin_sock="$tmp/admin/admin.sock"
mkdir -p "$tmp/server-data" "$tmp/agent-data"

sed -e "s|@TRUST_DOMAIN@|$td|g" -e "s|@BIND_PORT@|$port|g" \
	-e "s|@SOCKET_PATH@|$server_sock|g" -e "s|@DATA_DIR@|$tmp/server-data|g" \
	"$here/testdata/server.conf" >"$tmp/server.conf"

show "$bin/spire-server" run -config "$tmp/server.conf"
"$bin/spire-server" run -config "$tmp/server.conf" >"$tmp/server.log" 2>&1 &
server_pid=$!
wait_healthy spire-server "$bin/spire-server" healthcheck -socketPath "$server_sock"
show "$bin/spire-server" bundle show -socketPath "$server_sock"
"$bin/spire-server" bundle show -socketPath "$server_sock" >"$tmp/bundle.pem"
show "$bin/spire-server" token generate -socketPath "$server_sock" -spiffeID "spiffe://$td/gw/test"
token="$("$bin/spire-server" token generate -socketPath "$server_sock" -spiffeID "spiffe://$td/gw/test" | awk '$1 == "Token:" {print $2}')"
[[ -n "$token" ]] || { echo "smoke: no join token" >&2; exit 1; }

sed -e "s|@TRUST_DOMAIN@|$td|g" -e "s|@SERVER_PORT@|$port|g" \
	-e "s|@TRUST_BUNDLE@|$tmp/bundle.pem|g" -e "s|@DATA_DIR@|$tmp/agent-data|g" \
	-e "s|@SOCKET_PATH@|$workload_sock|g" -e "s|@ADMIN_SOCKET_PATH@|$admin_sock|g" \
	-e "s|@DELEGATE_ID@|spiffe://$td/vigil/node/1|g" \
	"$here/testdata/agent.conf" >"$tmp/agent.conf"

show "$bin/spire-agent" run -config "$tmp/agent.conf" -joinToken "$token"
"$bin/spire-agent" run -config "$tmp/agent.conf" -joinToken "$token" >"$tmp/agent.log" 2>&1 &
agent_pid=$!
wait_healthy spire-agent "$bin/spire-agent" healthcheck -socketPath "$workload_sock"
show "$bin/spire-server" agent list -socketPath "$server_sock"
"$bin/spire-server" agent list -socketPath "$server_sock" | tee "$tmp/agents.txt"
grep -q "spiffe://$td/spire/agent/join_token/$token" "$tmp/agents.txt"
[[ -S "$admin_sock" ]] || { echo "smoke: no admin socket at $admin_sock" >&2; exit 1; }

# A workload entry under the join token's alias; this process (its uid) then
# gets an X.509 SVID from the Workload API.
show "$bin/spire-server" entry create -socketPath "$server_sock" \
	-parentID "spiffe://$td/gw/test" -spiffeID "spiffe://$td/smoke/workload" -selector "unix:uid:$(id -u)"
"$bin/spire-server" entry create -socketPath "$server_sock" \
	-parentID "spiffe://$td/gw/test" -spiffeID "spiffe://$td/smoke/workload" -selector "unix:uid:$(id -u)"
show "$bin/spire-agent" api fetch x509 -socketPath "$workload_sock"
for _ in $(seq 150); do
	if "$bin/spire-agent" api fetch x509 -socketPath "$workload_sock" >"$tmp/fetch.txt" 2>&1 &&
		grep -q "spiffe://$td/smoke/workload" "$tmp/fetch.txt"; then
		cat "$tmp/fetch.txt"
		echo "smoke: OK (spire $("$bin/spire-server" --version 2>&1))"
		exit 0
	fi
	sleep 0.2
done
cat "$tmp/fetch.txt" >&2
echo "smoke: the workload got no SVID" >&2
exit 1
