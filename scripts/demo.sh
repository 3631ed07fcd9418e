#!/usr/bin/env bash
# A two-minute tour on this host: a "container" (a cgroup with busybox in
# it) is pinned to 127.0.0.2, may bind only ports 18000-18010, and has its
# port 80 remapped to 18080 at bind time. Everything it makes is removed at
# the end. Run as root: make demo
set -euo pipefail
cd "$(dirname "$0")/.."

ctl=./bin/portcullisctl
busybox=$(command -v busybox)
mount=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
cg="$mount/portcullis-demo"
policy=$(mktemp)
www=$(mktemp -d)
pids=()
state_dir=${PORTCULLIS_STATE_DIR:-/sys/fs/bpf/portcullis}
loaded_before=$([ -d "$state_dir" ] && echo yes || echo no)

cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	[ -d "$cg" ] && echo 1 >"$cg/cgroup.kill" # everything the container started
	wait 2>/dev/null || true
	$ctl detach --id demo >/dev/null 2>&1 || true
	for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
	# Unload only what the demo loaded itself (unload refuses while
	# anything else is attached).
	[ "$loaded_before" = no ] && $ctl unload >/dev/null 2>&1 || true
	rm -rf "$policy" "$www"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# in_container runs a command inside the demo cgroup.
in_container() { sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$@"; }

step "kernel check"
$ctl doctor | sed -n '1p;/cgroup v2/p;/bpf_bind/p;/programs load/p'

cat >"$policy" <<'JSON'
{
  "addresses": ["127.0.0.2"],
  "allowedPorts": ["18000-18010"],
  "portMappings": [{"containerPort": 80, "hostPort": 18080, "protocol": "tcp"}]
}
JSON
step "attach this policy to cgroup $cg"
cat "$policy"
mkdir -p "$cg"
$ctl attach --cgroup "$cg" --policy "$policy" --id demo

step "busybox nc -l -p 18001 (a wildcard bind) is pinned to 127.0.0.2"
in_container "$busybox" nc -l -p 18001 >/dev/null &
pids+=($!)
sleep 0.5
ss -Hltn 'sport = :18001'

step "busybox nc -l -p 9999 (outside allowedPorts) is refused by the kernel"
in_container "$busybox" nc -l -p 9999 || echo "-> exit $?: bind got EPERM, as the policy says"

step "busybox httpd -p 80 binds host port 18080 instead"
echo "hello from inside the container" >"$www/index.html"
in_container "$busybox" httpd -f -p 80 -h "$www" &
pids+=($!)
sleep 0.5
ss -Hltn 'sport = :18080'
printf 'GET http://127.0.0.2:18080/ -> '
"$busybox" wget -q -O - http://127.0.0.2:18080/

step "outgoing connections leave from 127.0.0.2"
sh -c "sleep 5 | $busybox nc -l -p 18009" >/dev/null & # a server on the host, outside the container
pids+=($!)
sleep 0.3
in_container "$busybox" sh -c "sleep 3 | $busybox nc 127.0.0.1 18009" >/dev/null &
pids+=($!)
sleep 0.5
echo "the container dialled 127.0.0.1:18009; the connection's local end:"
ss -Htn state established 'dport = :18009'

step "portcullisctl status"
$ctl status

step "detach: the cgroup behaves like any other again"
$ctl detach --id demo
in_container "$busybox" nc -l -p 9999 &
pids+=($!)
sleep 0.5
ss -Hltn 'sport = :9999'
echo
echo "demo done; everything it made is removed on exit"
