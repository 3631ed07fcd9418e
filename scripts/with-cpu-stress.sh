#!/usr/bin/env bash
# Runs a command while stress-ng keeps CPUS CPUs busy for at most TIMEOUT,
# and stops stress-ng when the command ends, whether it passed or not:
# timing-dependent tests show their flakes here first.
#   usage: with-cpu-stress.sh CPUS TIMEOUT COMMAND [ARG...]
set -euo pipefail
if [ $# -lt 3 ]; then
	echo "usage: $0 CPUS TIMEOUT COMMAND [ARG...]   (e.g. $0 2 20m go test ./...)" >&2
	exit 2
fi
cpus=$1 timeout=$2
shift 2
command -v stress-ng >/dev/null || {
	echo "with-cpu-stress: stress-ng is not installed (apt-get install stress-ng; make deps installs it)" >&2
	exit 1
}

# In a session of its own, so its workers are one process group, ended by
# that group's id. Its own output is only the warning that it was stopped
# early, which is the point.
setsid stress-ng --cpu "$cpus" --timeout "$timeout" --quiet >/dev/null 2>&1 &
stress=$!
sleep 0.5
kill -0 "$stress" 2>/dev/null || {
	echo "with-cpu-stress: stress-ng --cpu $cpus --timeout $timeout did not start" >&2
	exit 1
}
stop() {
	kill -TERM -- "-$stress" 2>/dev/null || true
	wait "$stress" 2>/dev/null || true
}
trap stop EXIT
echo "with-cpu-stress: stress-ng --cpu $cpus --timeout $timeout (pid $stress) while: $*"
"$@"
