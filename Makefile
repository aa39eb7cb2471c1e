# Vigil. `make test` is what CI runs (.ci/run): formatting, vet, the real
# SPIRE binaries (built once, cached), the RE2 program-size check of the
# translator's regexes (needs libre2-dev, which .ci/run installs), unit
# tests with the race detector, then the multi-process e2e tests.
GO       ?= go
FUZZTIME ?= 30s

.PHONY: all build test fmt-check vet re2 unit e2e fuzz bench clean spire

all: build

build:
	$(GO) build -o bin/vigil ./cmd/vigil

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
	$(GO) test ./xds -run '^$$' -fuzz FuzzAdmit -fuzztime $(FUZZTIME)
	$(GO) test ./attest -run '^$$' -fuzz FuzzParseEvidence -fuzztime $(FUZZTIME)
	$(GO) test ./attest -run '^$$' -fuzz FuzzTPM2Quote -fuzztime $(FUZZTIME)
	$(GO) test ./attest -run '^$$' -fuzz FuzzTPM2BinaryEventLog -fuzztime $(FUZZTIME)
	$(GO) test ./attest -run '^$$' -fuzz FuzzDICE -fuzztime $(FUZZTIME)
	$(GO) test ./attest -run '^$$' -fuzz FuzzEAT -fuzztime $(FUZZTIME)
	$(GO) test ./attest -run '^$$' -fuzz FuzzEKEnrollmentParsers -fuzztime $(FUZZTIME)

# Benchmarks and load tools print their figures and the hardware; see BENCHMARKS.md.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./topology ./raft

# The real spire-server and spire-agent (version pinned in tools/spire/go.mod),
# built once into ${VIGIL_SPIRE_CACHE:-$HOME/.cache/vigil/spire}/<version>/,
# outside the repo so that fresh clones reuse it. `make test` builds it first
# (a cold build takes about 7-10 minutes on 2 cores), so that no test's
# timeout has to cover it.
spire:
	@GO="$(GO)" ./scripts/spire-build.sh

clean:
	rm -rf bin e2e/bin
