# Weft: build the binaries, run a demo cluster in network namespaces, run the tests.
#
#   make build                      bin/weftd, bin/weft-docker-opts, bin/weft-cluster
#   sudo make cluster [BACKEND=udp|host-gw|vxlan] [NODES=3] [KEEP=1] [DOCKER=1]
#   sudo make cluster-down          remove a cluster left by KEEP=1
#   sudo make bench [BENCH_FLAGS=]  TCP 1+4 streams, round trip, agent CPU: veth, host-gw, vxlan, udp (~2 min)
#   sudo make bench-scale           one weftd with 100 to 4,000 simulated peers: change latency, CPU, RSS
#   sudo make test                  every tier (make test-unit: no root needed)
#   make kube-bin                   build kube-apiserver, kubectl, flanneld for the kube tier (once, ~11 min, cached)
#   make clean

SHELL := /bin/bash

GO      ?= go
BIN     ?= bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BACKEND ?= vxlan
NODES   ?= 3
KEEP    ?=
DOCKER  ?=

.PHONY: build cluster cluster-down bench bench-scale test test-unit kube-bin clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/weftd ./cmd/agent
	$(GO) build -o $(BIN)/weft-docker-opts ./docker-opts
	$(GO) build -o $(BIN)/weft-cluster ./cmd/weft-cluster

# The demo needs root (network namespaces), ip (iproute2), ping (iputils) and iptables (weftd's forward
# rules); DOCKER=1 (a dockerd and a busybox container on each node) also dockerd (docker.io) and a static
# busybox (busybox-static). Missing tools are installed with apt-get where it exists, without starting
# their services (dist/apt-install).
cluster: build
	@if [ "$$(id -u)" != 0 ]; then echo "make cluster: needs root (network namespaces): sudo make cluster" >&2; exit 1; fi
	@missing=""; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v ping >/dev/null 2>&1 || missing="$$missing iputils-ping"; \
	command -v iptables >/dev/null 2>&1 || missing="$$missing iptables"; \
	if [ -n "$(filter 1 yes true,$(DOCKER))" ]; then \
		command -v dockerd >/dev/null 2>&1 || missing="$$missing docker.io"; \
		if command -v dpkg >/dev/null 2>&1; then dpkg -s busybox-static >/dev/null 2>&1 || missing="$$missing busybox-static"; \
		else command -v busybox >/dev/null 2>&1 || missing="$$missing busybox-static"; fi; \
	fi; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing"; dist/apt-install $$missing || exit 1; \
		else echo "make cluster: please install$$missing" >&2; exit 1; fi; \
	fi
	$(BIN)/weft-cluster up --backend $(BACKEND) --nodes $(NODES) --weftd $(BIN)/weftd $(if $(filter 1 yes true,$(KEEP)),--keep) $(if $(filter 1 yes true,$(DOCKER)),--docker)

cluster-down:
	$(BIN)/weft-cluster down

# The bench tier (docs: testing.md): container-to-container TCP throughput (iperf3, 1 and 4 streams), round
# trip (ping) and the agents' CPU over a plain veth pair and each backend, measured in one run. Needs root, ip,
# ping, iptables and iperf3 (missing ones installed with apt-get where it exists). Never part of `make test` or
# CI. BENCH_FLAGS go to weft-cluster bench, e.g. BENCH_FLAGS="--baseline-weftd /tmp/weftd-old --paths vxlan,udp".
BENCH_FLAGS ?=
bench: build
	@if [ "$$(id -u)" != 0 ]; then echo "make bench: needs root (network namespaces): sudo make bench" >&2; exit 1; fi
	@missing=""; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v ping >/dev/null 2>&1 || missing="$$missing iputils-ping"; \
	command -v iptables >/dev/null 2>&1 || missing="$$missing iptables"; \
	command -v iperf3 >/dev/null 2>&1 || missing="$$missing iperf3"; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing"; DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing || exit 1; \
		else echo "make bench: please install$$missing" >&2; exit 1; fi; \
	fi
	$(BIN)/weft-cluster bench --weftd $(BIN)/weftd $(BENCH_FLAGS)

# The scale bench: one weftd (vxlan) with 100, 1,000 and 4,000 simulated peers in a local etcd; start time,
# new lease to route p50/p99 and their ratios, CPU at rest, RSS (a few minutes; root, iproute2).
bench-scale: build
	@if [ "$$(id -u)" != 0 ]; then echo "make bench-scale: needs root (network namespaces)" >&2; exit 1; fi
	$(BIN)/weft-cluster bench-scale --weftd $(BIN)/weftd

# The kube tier's real kube-apiserver, kubectl and flannel's flanneld, built from Go modules into a cache
# folder outside the repo ($$WEFT_KUBE_BIN, default /var/cache/weft/kube-v1.37.2); a no-op once they are there.
kube-bin:
	dist/kubetest/build-apiserver.sh
	dist/kubetest/build-flanneld.sh

# Every tier: unit, store (in-process etcd), kernel, kube (a real kube-apiserver) and end-to-end (netns;
# root). WEFT_E2E=1 makes a missing prerequisite a failure. Kernel-tier packages run first, the end-to-end
# suite (./cmd/agent) last and alone.
test:
	@if [ "$$(id -u)" != 0 ]; then echo "make test: the kernel and end-to-end tiers need root: sudo make test (or make test-unit)" >&2; exit 1; fi
	@$(MAKE) --no-print-directory kube-bin
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	WEFT_E2E=1 $(GO) test -count=1 -timeout 15m $$($(GO) list ./... | grep -v '/cmd/agent$$')
	WEFT_E2E=1 $(GO) test -count=1 -timeout 15m ./cmd/agent

# Unit and store tiers only; no root needed.
test-unit:
	$(GO) test -short ./...

clean:
	rm -rf $(BIN)
