# Kip's Makefile only calls hack/ scripts and go.
.PHONY: all build images test unit fuzz race chaos demo bench conformance control-plane deps verify clean

all: build

deps:
	hack/install-deps.sh

build:
	go build -o bin/ ./cmd/...

# The kip and kip-cell images (hack/images), tagged with `git describe`, in bin/images;
# PUSH=registry[/prefix] also pushes them there (INSECURE=1: plain HTTP, as kip up's registry;
# its push credentials: DOCKER_CONFIG=~/.kip/registry-auth, which kip up prints). RUNC=path picks
# the runc the kip image serves to cells (default: the runc on PATH).
images:
	go run ./hack/images $(if $(PUSH),--push $(PUSH)) $(if $(INSECURE),--insecure) $(if $(VERSION),--version $(VERSION)) $(if $(RUNC),--runc $(RUNC))

control-plane:
	hack/build-control-plane.sh

test:
	hack/test.sh

unit:
	go test -short ./...

# Every native fuzz target for FUZZTIME each (default 1m), one after another (docs/fuzzing.md).
fuzz:
	hack/fuzz.sh

# The packages that run goroutines per pod, under the race detector (docs/fuzzing.md).
race:
	hack/race.sh

# Seeded, randomized fault rounds over the local backend, with a tally (CHAOS_ROUNDS, default
# 50; CHAOS_SEED; CHAOS_ONLY replays rounds; docs/chaos.md). Root only.
chaos:
	hack/chaos.sh

demo:
	hack/demo.sh

bench:
	hack/bench.sh

# Kubernetes' own e2e suite against Kip, offline, as root (not part of make test; docs/conformance.md).
conformance:
	hack/conformance.sh

verify:
	hack/verify.sh

clean:
	rm -rf bin
