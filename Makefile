# Vigil. `make test` is what CI runs (.ci/run): formatting, vet, the real
# SPIRE binaries (built once, cached), the RE2 program-size check of the
# translator's regexes (needs libre2-dev, which .ci/run installs), unit
# tests with the race detector, then the multi-process e2e tests.
GO       ?= go
FUZZTIME ?= 30s

.PHONY: all build test fmt-check vet re2 unit e2e fuzz bench soak clean spire spire-plugin

all: build

build: spire-plugin
	$(GO) build -o bin/vigil ./cmd/vigil

# The vigil_tpm SPIRE node attestor (docs/spire-tpm.md): spire-server loads
# bin/vigil-tpm-attestor-server, spire-agent bin/vigil-tpm-attestor-agent. The
# checksums are what plugin_checksum takes.
spire-plugin:
	$(GO) build -o bin/ ./cmd/vigil-tpm-attestor-server ./cmd/vigil-tpm-attestor-agent
	@cd bin && sha256sum vigil-tpm-attestor-server vigil-tpm-attestor-agent

test: fmt-check vet re2 spire unit e2e

fmt-check:
	@out=$$(gofmt -l . ); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	cd e2e && $(GO) vet ./...

# Envoy compiles every safe_regex with Google RE2 and NACKs the whole
# resource when its RE2 program size exceeds 100 (re2.max_program_size.
# error_level). With the re2 tag, xds/re2_cgo_test.go measures every regex
# the translator emits (golden and stress cases) with the real libre2, as
# Envoy does; TestRE2Syntax (no tag) runs in `unit` everywhere. Needs RE2's
# C++ headers and library (Debian: libre2-dev) and g++.
re2:
	@if ! echo '#include <re2/re2.h>' | $(CXX) -std=c++17 -x c++ -fsyntax-only - >/dev/null 2>&1; then \
		echo "make re2: cannot compile against RE2 (<re2/re2.h> with $(CXX))."; \
		echo "  Install it: sudo apt-get install -y libre2-dev g++   (.ci/run does this itself)"; \
		exit 1; \
	fi
	$(GO) vet -tags re2 ./xds/...
	$(GO) test -tags re2 -count=1 -run RE2 ./xds

unit:
	$(GO) test -race -count=1 -timeout 10m ./...

e2e:
	cd e2e && $(GO) test -count=1 -timeout 20m ./...

# Coverage-guided fuzzing of the parsers (not part of `make test`).
fuzz:
	$(GO) test ./topology -run '^$$' -fuzz FuzzLoad -fuzztime $(FUZZTIME)
	$(GO) test ./authz -run '^$$' -fuzz FuzzParseRequest -fuzztime $(FUZZTIME)
	$(GO) test ./authz -run '^$$' -fuzz FuzzCheckAudit -fuzztime $(FUZZTIME)
	$(GO) test ./authz -run '^$$' -fuzz FuzzDecisionLine -fuzztime $(FUZZTIME)
	$(GO) test ./xds -run '^$$' -fuzz FuzzAdmit -fuzztime $(FUZZTIME)
	$(GO) test ./attest -run '^$$' -fuzz FuzzParseEvidence -fuzztime $(FUZZTIME)
	$(GO) test ./attest -run '^$$' -fuzz FuzzTPM2Quote -fuzztime $(FUZZTIME)
	$(GO) test ./attest -run '^$$' -fuzz FuzzTPM2BinaryEventLog -fuzztime $(FUZZTIME)
	$(GO) test ./attest -run '^$$' -fuzz FuzzDICE -fuzztime $(FUZZTIME)
	$(GO) test ./attest -run '^$$' -fuzz FuzzEAT -fuzztime $(FUZZTIME)
	$(GO) test ./attest -run '^$$' -fuzz FuzzEKEnrollmentParsers -fuzztime $(FUZZTIME)
	$(GO) test ./internal/spiretpm -run '^$$' -fuzz FuzzParsePayload -fuzztime $(FUZZTIME)

# `make bench` runs every benchmark and load figure that BENCHMARKS.md cites,
# one after another, hardware, commit and load average first: the
# in-process Go benchmarks, then the vigil-load subcommands with their
# documented flags. Each step is bounded (go test -timeout, and `timeout`
# around the step); a step that fails or runs out of time is reported and
# the others still run; `make bench` fails at the end if any did. About 40
# minutes on the reference machine (2 cores), most of it the load tools;
# needs the SPIRE binaries (the `spire` step builds them once, 7-10 minutes
# cold, outside the bound). BENCH_QUICK=1 is a smoke run of every step with
# each tool's quick or small settings (8-9 minutes here). Keep the output:
#   make bench 2>&1 | tee bench.log
# The machine is shared: look at the load average it prints (and the
# "other load" of `vigil-load authz-compare`) before trusting a figure.
BENCH_QUICK ?=
BENCH_LOAD  := $(CURDIR)/bin/vigil-load
BENCH_FAIL  := $(CURDIR)/bin/bench-failed
# $(bench_run) NAME BOUND CMD...: prints a banner, runs CMD under
# `timeout BOUND`, prints its exit status and time, records a failure.
bench_run = f() { n="$$1"; b="$$2"; shift 2; printf '\n\#\#\#\#\#\#\#\# %s (bound %s): %s\n' "$$n" "$$b" "$$*"; s=$$(date +%s); \
	timeout -k 30s "$$b" "$$@"; rc=$$?; printf '\#\#\#\#\#\#\#\# %s: exit %s after %ss\n' "$$n" "$$rc" "$$(( $$(date +%s) - s ))"; \
	[ "$$rc" = 0 ] || echo "$$n (exit $$rc$$( [ "$$rc" = 124 ] && echo ': out of time'))" >> $(BENCH_FAIL); }; f

ifeq ($(BENCH_QUICK),1)
BENCH_MODE        := quick (BENCH_QUICK=1: smoke settings, figures not comparable with BENCHMARKS.md)
B_TOPOLOGY_GO     := -benchtime 1x
B_LOOKUPS_GO      := -benchtime 2000x
B_AUTHZ_GO        := -benchtime 2000x
B_AUTHZ_HARD_GO   := -benchtime 0.3s -count 1
B_XDS_GO          := -bench 'DocumentChange|Quarantine' -benchtime 1x -count 1
B_XDS_PUSH_GO     := -benchtime 1x
B_ATTEST_GO       := -benchtime 0.2s
B_OBSERVE_GO      := -benchtime 100000x
B_MEMORY_GO       := -bench 'MemoryPerDevice/^100000$$' -benchtime 1x
B_BENIGN_DAY      := 1000
B_NODE_GO         := -benchtime 1s
B_CONSOLE_GO      := -benchtime 0.2s
B_SPIRE_GO        := -bench 'ReconcileRealServer/^devices=10000$$'
B_SPIRE_E2E       := 1000
B_SPIRE_TPM       := -tpm-for 5s
B_WRITES          := -duration 2s -failovers 1 -devices 1000
B_TOPOLOGY        := -devices 100000
B_AUTHZ           := -duration 3s
B_COMPARE         := -quick
B_QUARANTINE      := -trials 5
B_XDS             := -gateways 500 -quarantines 10
B_XDS_CONN        := -gateways 500 -quarantines 10 -streams-per-conn 1
B_XDS_TLS         := -gateways 500 -quarantines 10 -tls
B_FLOOD_BIG       := -requests 50
B_FLOOD_MANY      := -requests 1000 -path-bytes 200000
B_ATTEST          := -devices 1000 -clients 32 -duration 3s
B_MONITOR         := -devices 100000 -duration 3s -rounds 1 -trials 10
B_CONSOLE         := -quick
else
BENCH_MODE        := full
B_TOPOLOGY_GO     :=
B_LOOKUPS_GO      := -benchtime 20000x
B_AUTHZ_GO        := -benchtime 20000x
B_AUTHZ_HARD_GO   := -benchtime 2s -count 3
B_XDS_GO          := -bench 'DocumentChange|Quarantine' -benchtime 10x -count 3
B_XDS_PUSH_GO     := -benchtime 3x
B_ATTEST_GO       := -benchtime 1s
B_OBSERVE_GO      := -benchtime 1000000x
B_MEMORY_GO       := -bench 'MemoryPerDevice' -benchtime 1x
B_BENIGN_DAY      := 10000
B_NODE_GO         := -benchtime 5s
B_CONSOLE_GO      := -benchtime 1s
B_SPIRE_GO        := -bench 'ReconcileRealServer'
B_SPIRE_E2E       := 10000
B_SPIRE_TPM       := -tpm-for 30s
B_WRITES          := -duration 10s -failovers 5
B_TOPOLOGY        := -devices 100000,1000000
B_AUTHZ           := -duration 10s
B_COMPARE         :=
B_QUARANTINE      := -trials 30
B_XDS             := -gateways 1000,5000
B_XDS_CONN        := -gateways 5000 -streams-per-conn 1
B_XDS_TLS         := -gateways 1000,5000 -tls
B_FLOOD_BIG       :=
B_FLOOD_MANY      := -requests 20000 -path-bytes 200000
B_ATTEST          := -devices 5000 -clients 128 -duration 10s
B_MONITOR         := -devices 100000 -duration 10s -rounds 3
B_CONSOLE         :=
endif

bench:
	@mkdir -p bin && rm -f $(BENCH_FAIL)
	@echo "make bench: $(BENCH_MODE); started $$(date -u +%FT%TZ)"
	@echo "commit $$(git rev-parse --short HEAD 2>/dev/null) ($$(git status --porcelain 2>/dev/null | wc -l) files changed in the work tree)"
	@echo "load average: $$(cut -d' ' -f1-3 /proc/loadavg)"
	@$(GO) -C e2e build -o $(BENCH_LOAD) ./cmd/vigil-load && $(BENCH_LOAD) hardware
	@# In process (BENCHMARKS.md: topology, authorizer, xDS, hardening, attestation, monitor, console).
	@$(bench_run) 'topology, raft: all benchmarks' 15m $(GO) test -timeout 14m -run '^$$' -bench . -benchmem $(B_TOPOLOGY_GO) ./topology ./raft
	@$(bench_run) 'topology: lookups and state writes' 5m $(GO) test -timeout 4m -run '^$$' -bench 'Lookups|StateWith' -benchmem $(B_LOOKUPS_GO) ./topology
	@$(bench_run) 'authz: Check and policy evaluation' 10m $(GO) test -timeout 9m -run '^$$' -bench 'BenchmarkCheck|BenchmarkPolicyEval' -benchmem $(B_AUTHZ_GO) ./authz
	@$(bench_run) 'authz: decision log Record' 5m $(GO) test -timeout 4m -run '^$$' -bench BenchmarkRecord ./authz
	@$(bench_run) 'authz: Check cost of the hardening' 10m $(GO) test -timeout 9m -run '^$$' -bench 'BenchmarkCheck$$|BenchmarkCheckUncached|BenchmarkParseRequest' $(B_AUTHZ_HARD_GO) ./authz
	@$(bench_run) 'xds: document change and quarantine' 15m $(GO) test -timeout 14m -run '^$$' $(B_XDS_GO) ./xds
	@$(bench_run) 'xds: document change pushed' 10m $(GO) test -timeout 9m -run '^$$' -bench DocumentChangePush $(B_XDS_PUSH_GO) ./xds
	@$(bench_run) 'attest: verifications, one core' 5m $(GO) test -timeout 4m -run '^$$' -bench Verify $(B_ATTEST_GO) -cpu 1 ./attest
	@$(bench_run) 'monitor: one event through every detector' 5m $(GO) test -timeout 4m -run '^$$' -bench Observe $(B_OBSERVE_GO) ./monitor
	@$(bench_run) 'monitor: memory per device' 5m $(GO) test -timeout 4m -run '^$$' $(B_MEMORY_GO) ./monitor
	@$(bench_run) 'monitor: a benign simulated day ($(B_BENIGN_DAY) devices)' 10m $(GO) test -timeout 9m -count 1 -run TestBenignDay -v ./monitor -benign-day $(B_BENIGN_DAY)
	@$(bench_run) 'node: ext_authz with the monitor off and on' 5m $(GO) test -timeout 4m -run '^$$' -bench CheckMonitor $(B_NODE_GO) ./node
	@$(bench_run) 'console: stream hub' 5m $(GO) test -timeout 4m -run '^$$' -bench . -benchmem $(B_CONSOLE_GO) ./console
	@# SPIRE (built once, cached outside the repo; not bounded: a cold build takes 7-10 minutes).
	@GO="$(GO)" ./scripts/spire-build.sh >/dev/null || echo "spire build" >> $(BENCH_FAIL)
	@$(bench_run) 'spire: reconcile passes against the real server' 10m $(GO) test -timeout 9m -run '^$$' $(B_SPIRE_GO) -benchtime=1x ./spire
	@$(bench_run) 'spire: quarantine through a 3-member cluster ($(B_SPIRE_E2E) devices)' 10m $(GO) -C e2e test -timeout 9m -run '^$$' -bench SPIREQuarantine -benchtime=1x . -args -devices $(B_SPIRE_E2E)
	@$(bench_run) 'spire: vigil_tpm attestations through one server' 5m $(GO) -C e2e test -timeout 4m -run '^$$' -bench SPIRETPMAttest -benchtime=1x . -args $(B_SPIRE_TPM)
	@$(bench_run) 'spire: agent start to first SVID, vigil_tpm and join token' 5m $(GO) -C e2e test -timeout 4m -run '^$$' -bench SPIRETPMFirstSVID -benchtime=1x .
	@# Load tools (vigil-load: real `vigil serve` processes on 127.0.0.1), in BENCHMARKS.md's order.
	@$(bench_run) 'vigil-load writes' 5m $(BENCH_LOAD) writes $(B_WRITES)
	@$(bench_run) 'vigil-load topology' 10m $(BENCH_LOAD) topology $(B_TOPOLOGY)
	@$(bench_run) 'vigil-load authz: 20,000 distinct' 3m $(BENCH_LOAD) authz $(B_AUTHZ)
	@$(bench_run) 'vigil-load authz: 100,000 distinct' 3m $(BENCH_LOAD) authz $(B_AUTHZ) -distinct 100000
	@$(bench_run) 'vigil-load authz: plaintext, 20 connections' 3m $(BENCH_LOAD) authz $(B_AUTHZ) -conns 20
	@$(bench_run) 'vigil-load authz: mutual TLS' 3m $(BENCH_LOAD) authz $(B_AUTHZ) -tls
	@$(bench_run) 'vigil-load authz-compare: plaintext' 5m $(BENCH_LOAD) authz-compare $(B_COMPARE)
	@$(bench_run) 'vigil-load authz-compare: mutual TLS' 5m $(BENCH_LOAD) authz-compare $(B_COMPARE) -tls
	@$(bench_run) 'vigil-load quarantine' 5m $(BENCH_LOAD) quarantine $(B_QUARANTINE)
	@$(bench_run) 'vigil-load xds: 100 streams per connection' 10m $(BENCH_LOAD) xds $(B_XDS) -timeout 4m
	@$(bench_run) 'vigil-load xds: a connection per gateway' 10m $(BENCH_LOAD) xds $(B_XDS_CONN) -timeout 4m
	@$(bench_run) 'vigil-load xds: mutual TLS' 10m $(BENCH_LOAD) xds $(B_XDS_TLS) -timeout 4m
	@$(bench_run) 'e2e: proxyless gRPC' 5m $(GO) -C e2e test -timeout 4m -count 1 -run TestProxylessGRPC -v .
	@$(bench_run) 'vigil-load flood: 4 MB paths' 5m $(BENCH_LOAD) flood $(B_FLOOD_BIG)
	@$(bench_run) 'vigil-load flood: 200 kB paths' 5m $(BENCH_LOAD) flood $(B_FLOOD_MANY)
	@$(bench_run) 'vigil-load attest' 5m $(BENCH_LOAD) attest $(B_ATTEST)
	@$(bench_run) 'vigil-load monitor' 10m $(BENCH_LOAD) monitor $(B_MONITOR)
	@$(bench_run) 'vigil-load console' 10m $(BENCH_LOAD) console $(B_CONSOLE)
	@echo; echo "make bench: done $$(date -u +%FT%TZ); load average $$(cut -d' ' -f1-3 /proc/loadavg)"
	@if [ -s $(BENCH_FAIL) ]; then echo "make bench: these steps failed:"; cat $(BENCH_FAIL); exit 1; fi

# `make soak` (not part of `make test`: TestSoak skips unless VIGIL_SOAK is
# set) runs e2e/soak_test.go: a 3-member cluster behind a fault network under
# continuous writes, min_revision reads and ext_authz Checks through every
# member, with a random fault every 10 s (isolations, one-way cuts, slow and
# lossy links, resets, SIGSTOP, SIGKILL and restart), then a porcupine check
# of the history and a report (operations, Checks, faults, unavailability,
# convergence, RSS/fd/goroutine growth) on stdout and in
# e2e/artifacts/soak/report.txt. SOAK is its length (default 20m;
# SOAK=5m make soak); the test's -timeout is SOAK plus 15 minutes (Go adds
# up "20m15m" to 35m). VIGIL_SOAK_SEED=<n> repeats a run's fault schedule.
SOAK ?= 20m

soak:
	cd e2e && VIGIL_SOAK=$(SOAK) $(GO) test -count=1 -v -run '^TestSoak$$' -timeout $(SOAK)15m .

# The real spire-server and spire-agent (version pinned in tools/spire/go.mod),
# built once into ${VIGIL_SPIRE_CACHE:-$HOME/.cache/vigil/spire}/<version>/,
# outside the repo so that fresh clones reuse it. `make test` builds it first
# (a cold build takes about 7-10 minutes on 2 cores), so that no test's
# timeout has to cover it.
spire:
	@GO="$(GO)" ./scripts/spire-build.sh

clean:
	rm -rf bin e2e/bin
