# roam — build, test and benchmark. `make help` lists the targets.
# Everything that needs the kernel (BPF, XDP, namespaces) runs as root.

GO      ?= go
CLANG   ?= clang
STRIP   ?= llvm-strip
# asm/types.h lives under the machine's multiarch directory (Debian).
MULTIARCH ?= $(shell gcc -print-multiarch 2>/dev/null || $(CLANG) -print-multiarch 2>/dev/null)
BPF_CFLAGS ?= -O2 -g -Wall -Werror $(if $(MULTIARCH),-I/usr/include/$(MULTIARCH))
BIN     ?= bin
GOTEST_FLAGS ?= -count=1 -timeout 30m
SOAK_DURATION ?= 10m
# Pinned linters, fetched through the module proxy (no system install).
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The committed bpf2go output (what check-generate compares).
GENERATED = 'dataplane/*_bpfel.go' 'dataplane/*_bpfel.o' 'test/bench/dataplane/*_bpfel.go' 'test/bench/dataplane/*_bpfel.o'

export BPF_CLANG := $(CLANG)
export BPF_STRIP := $(STRIP)
export BPF_CFLAGS

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## install the system packages roam needs (clang, bpftool, iproute2, iperf3, ...; root, apt)
	bash test/install-deps.sh

.PHONY: generate
generate: ## compile bpf/ and the dataplane benchmark's generator with clang through bpf2go (go generate); output is committed
	$(GO) generate ./dataplane/... ./test/bench/dataplane/...

.PHONY: build
build: ## build every binary into ./bin
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

.PHONY: test
test: deps ## run every test (root: BPF, XDP on veth, network namespaces)
	$(GO) test $(GOTEST_FLAGS) ./...

# The control plane test/k8s runs, built by test/k8s/tools/build.sh from the Go
# module proxy; GOCACHE keeps it, so only a cold machine pays the build.
K8S_BIN ?= $(HOME)/.cache/roam-k8s/v1.37.2

.PHONY: test-k8s
test-k8s: deps ## deploy/ and the kube backend against two real control planes (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes; cold build 15+ min on an idle 2-core machine, then seconds; root)
	bash test/k8s/tools/build.sh $(K8S_BIN)
	K8S_BIN=$(K8S_BIN) $(GO) test -tags k8s -count=1 -timeout 20m -v ./test/k8s/

.PHONY: lint
lint: ## gofmt, go vet, staticcheck, go.mod tidy, and a check that the committed bpf2go output is fresh
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...
	$(GO) mod tidy -diff
	$(GO) vet -tags k8s ./test/k8s/
	$(MAKE) --no-print-directory check-generate

.PHONY: check-generate
check-generate: generate ## fail if the committed bpf2go output differs from a fresh generate
	@git diff --exit-code --stat -- $(GENERATED) || { echo "bpf2go output is stale: run 'make generate' and commit"; exit 1; }

.PHONY: bench
bench: bench-dataplane bench-meta bench-migration bench-trigger bench-srv6 ## run every benchmark


.PHONY: bench-dataplane
bench-dataplane: deps ## one core: roam XDP vs iptables vs nftables vs a userspace proxy, per-packet cost, new flows, 100k/1M flows, IPv6 (root; flags: BENCH_DATAPLANE_FLAGS)
	$(GO) run ./test/bench/dataplane $(BENCH_DATAPLANE_FLAGS)

.PHONY: bench-meta
bench-meta: ## placement p50/p99 at 10 to 100,000 clusters, hello ingest, herding, failover of a NATS node + MO replica (3 roam-meta processes)
	$(GO) run ./test/bench/meta

.PHONY: bench-migration
bench-migration: deps ## 51 migrations under short, keep-alive (Go, wrk) and UDP clients: failures, Table I, totals, port exhaustion (root)
	$(GO) run ./test/bench/migration

.PHONY: bench-trigger
bench-trigger: deps ## zero-touch on the testbed: network change -> commit, bandwidth estimate vs tbf, moves under noise at the need +-10% (root; flags: BENCH_TRIGGER_FLAGS, e.g. -noise 10m)
	$(GO) run ./test/bench/trigger $(BENCH_TRIGGER_FLAGS)

.PHONY: soak
soak: deps ## roam on the testbed under chaos (kill -9 of controllers, agents, the MO; cuts; shaping) with real clients, invariants checked all along (root; SOAK_DURATION, default 10m)
	$(GO) run ./test/soak -duration $(SOAK_DURATION) $(SOAK_FLAGS)

.PHONY: bench-srv6
bench-srv6: deps ## NAT vs SRv6 path mode through one migration with the old copy removed mid-stream: UDP loss/dup/reorder, connect p99, goodput bins, client address, home ns/packet (root)
	$(GO) run ./test/bench/srv6 $(BENCH_SRV6_FLAGS)

.PHONY: demo
demo: deps ## the quick start: testbed up, the paper's experiment, table and plot, testbed down (root)
	$(GO) run ./cmd/roam-testbed run

.PHONY: clean
clean: ## remove build output
	rm -rf $(BIN)
