# Vigil. `make test` is what CI runs (.ci/run): formatting, vet, the real
# SPIRE binaries (built once, cached), unit tests with the race detector,
# then the multi-process e2e tests.
GO       ?= go
FUZZTIME ?= 30s

.PHONY: all build test fmt-check vet unit e2e fuzz bench clean spire

all: build

build:
	$(GO) build -o bin/vigil ./cmd/vigil

test: fmt-check vet spire unit e2e

fmt-check:
	@out=$$(gofmt -l . ); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	cd e2e && $(GO) vet ./...

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
