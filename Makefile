# Kip's Makefile only calls hack/ scripts and go.
.PHONY: all build test unit demo bench conformance control-plane deps verify clean

all: build

deps:
	hack/install-deps.sh

build:
	go build -o bin/ ./cmd/...

control-plane:
	hack/build-control-plane.sh

test:
	hack/test.sh

unit:
	go test -short ./...

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
