#!/usr/bin/env bash
# Installs what portcullis needs to build, demo and test on Debian 12, and
# mounts bpffs. Idempotent: installs only what is missing.
set -euo pipefail

packages=(
	clang-19 llvm-19 libbpf-dev linux-libc-dev # make generate (bpf2go)
	bpftool iproute2                           # tests inspect links, make namespaces
	busybox-static                             # static clients/servers in tests and the demo
	runc containerd containernetworking-plugins # end-to-end tests with real runtimes
	iperf3 wrk                                  # benchmarks
	nginx-light redis-server                    # real servers with stock configuration in tests
	podman                                      # end-to-end tests: podman's hooks.d and CNI backend
	stress-ng                                   # CI runs the suite once more under CPU pressure
	etcd-server etcd-client                     # multi-host service sync tests
	tcpdump nftables iptables                   # wire checks; the reference portmap plugin
	libcap2-bin                                 # capsh: a load without CAP_PERFMON
	git make ca-certificates
)

if [ "$(id -u)" != 0 ]; then
	echo "install-deps: run as root (it installs packages and mounts bpffs)" >&2
	exit 1
fi

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Go: the module names the version it needs; an older go fetches it from
# the module proxy (GOTOOLCHAIN=auto).
if ! command -v go >/dev/null; then
	if [ -x /usr/local/go/bin/go ]; then
		export PATH=/usr/local/go/bin:$PATH
	else
		apt-get install -y -q golang-go
	fi
fi

# Real CRI and CNI clients for the end-to-end tests, from the Go module
# proxy: crictl drives containerd's CRI as kubelet does, cnitool drives a
# conflist as a runtime does.
gobin=/usr/local/bin
[ -x $gobin/crictl ] || GOBIN=$gobin go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0
[ -x $gobin/cnitool ] || GOBIN=$gobin go install github.com/containernetworking/cni/cnitool@v1.3.0

# Debian's packages start their services on install; the tests start their
# own instances on their own ports, so the stock ones are stopped.
for svc in nginx redis-server etcd; do
	service "$svc" stop >/dev/null 2>&1 || true
done

# bpffs holds the pinned state; portcullis mounts it on first use too.
if ! mountpoint -q /sys/fs/bpf; then
	mount -t bpf bpf /sys/fs/bpf
fi

# cgroup v2 must be there (unified or hybrid).
if ! grep -q ' - cgroup2 ' /proc/self/mountinfo; then
	echo "install-deps: cgroup v2 is not mounted; portcullis needs it" >&2
	exit 1
fi
