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

# bpffs holds the pinned state; portcullis mounts it on first use too.
if ! mountpoint -q /sys/fs/bpf; then
	mount -t bpf bpf /sys/fs/bpf
fi

# cgroup v2 must be there (unified or hybrid).
if ! grep -q ' - cgroup2 ' /proc/self/mountinfo; then
	echo "install-deps: cgroup v2 is not mounted; portcullis needs it" >&2
	exit 1
fi
