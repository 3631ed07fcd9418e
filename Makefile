# portcullis — see README.md. Targets run as root on a Linux host with cgroup v2.
GO ?= go
PREFIX ?= /usr/local
CNI_BIN_DIR ?= /opt/cni/bin
BIN := bin
# The programs: portcullisctl, the CNI plugin and the OCI hook.
COMMANDS := ./cmd/... $(if $(wildcard plugins/*),./plugins/...) $(if $(wildcard hooks/*),./hooks/...)

.PHONY: all deps build generate check-generated lint unit-test test test-stress bench fuzz demo install clean

all: build

# Debian packages (clang-19, bpftool, runc, containerd, busybox-static, ...)
# and the bpffs mount. Installs only what is missing.
deps:
	./scripts/install-deps.sh

# The build the state records (docs/upgrade.md).
BUILD_ID ?= $(shell git describe --always --dirty 2>/dev/null)
build:
	CGO_ENABLED=0 $(GO) build -ldflags "-X github.com/portcullis-net/portcullis/pkg/state.buildOverride=$(BUILD_ID)" -o $(BIN)/ $(COMMANDS)

# Rebuild the BPF objects and Go bindings from bpf/*.c (needs clang-19).
generate:
	@command -v clang-19 >/dev/null || $(MAKE) deps
	$(GO) generate ./pkg/bpfobj/...

check-generated: generate
	@git diff --exit-code --stat -- pkg/bpfobj || { echo "generated BPF files are stale: run make generate and commit"; exit 1; }

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed: $$out"; exit 1; }
	$(GO) vet ./...

unit-test:
	$(GO) test ./pkg/policy/... ./pkg/cgroup/...

# All tests: unit, integration (real programs in real cgroups/netns) and
# end-to-end (real runtimes). Needs root. CI runs each test twice
# (TEST_COUNT=2) and then test-stress, so a flaky test shows before it
# lands; TEST_PKGS narrows both to some packages.
TEST_PKGS ?= ./...
TEST_COUNT ?= 1
TEST_TIMEOUT ?= 25m
test: deps lint build
	$(GO) test -count=$(TEST_COUNT) -p 1 -timeout $(TEST_TIMEOUT) $(TEST_PKGS)
	$(MAKE) fuzz FUZZTIME=3s

# The tests once more while stress-ng keeps STRESS_CPUS CPUs busy (stopped
# when they end, at the latest after STRESS_TIMEOUT).
STRESS_CPUS ?= 2
STRESS_TIMEOUT ?= 20m
test-stress: deps build
	./scripts/with-cpu-stress.sh $(STRESS_CPUS) $(STRESS_TIMEOUT) \
		$(GO) test -count=1 -p 1 -timeout $(TEST_TIMEOUT) $(TEST_PKGS)

# Go fuzz targets, package:function. go test runs their seed corpus and
# testdata/fuzz regressions as ordinary tests; make fuzz mutates for
# FUZZTIME each (docs/limits.md).
FUZZ := ./pkg/policy:FuzzParse ./pkg/services:FuzzParseDeclarations ./pkg/cni:FuzzConf ./pkg/ocihook:FuzzState
FUZZTIME ?= 1m
fuzz:
	@set -e; for t in $(FUZZ); do \
		echo "fuzz $${t#*:} in $${t%%:*} for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) "$${t%%:*}"; \
	done

# The bind and connect ratios are the median of 100-op blocks: 2,000 ops
# give 20 blocks a side, which moves the ratio by +-0.03 from run to run,
# so those two get 20,000 ops (200 blocks, about 15 s) and three rounds.
RATIO_BENCH := ^(BenchmarkBind|BenchmarkConnect|BenchmarkConnectGuarded)$$
bench: deps build
	$(GO) test -run '^$$' -bench '$(RATIO_BENCH)' -benchtime 20000x -count 3 ./test/bench/
	$(GO) test -run '^$$' -bench . -skip '$(RATIO_BENCH)' -benchtime 2000x -count 1 ./test/bench/...

demo: deps build
	./scripts/demo.sh

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(CNI_BIN_DIR)
	install -m 0755 $(BIN)/portcullisctl $(BIN)/portcullis-hook $(DESTDIR)$(PREFIX)/bin/
	install -m 0755 $(BIN)/portcullis $(DESTDIR)$(CNI_BIN_DIR)/

clean:
	rm -rf $(BIN)
