#!/usr/bin/env bash
# usage: with_foreign_ray.sh CMD...  -- runs CMD while a foreign Ray head runs (private RAY_TMPDIR),
# with RAY_TMPDIR and RAY_ADDRESS pointing at it; stops only that head's process group.
set -u
T=$(mktemp -d /tmp/rfh.XXXX)
PORT=$(python -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
RAY_TMPDIR=$T RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 setsid ray start --head --block --port=$PORT --node-ip-address=127.0.0.1 --num-cpus=1 --disable-usage-stats --include-dashboard=false >"$T/head.log" 2>&1 &
HEAD=$!
for i in $(seq 1 180); do [ -s "$T/ray/ray_current_cluster" ] && break; sleep 1; done
ADDR=$(cat "$T/ray/ray_current_cluster")
echo "foreign head pid $HEAD pgid $HEAD at $ADDR (RAY_TMPDIR=$T)"
export RAY_TMPDIR=$T RAY_ADDRESS=$ADDR
"$@"; RC=$?
echo "foreign head still alive: $(ps -o pid= -p $HEAD >/dev/null && echo yes || echo no)"
kill -TERM -- -$HEAD; sleep 5; kill -KILL -- -$HEAD 2>/dev/null
rm -rf "$T"
echo "command rc=$RC"
exit $RC
