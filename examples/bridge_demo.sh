#!/usr/bin/env bash
# Two "machines" on this one: two network namespaces joined by a veth pair, each with its own
# private /dev/shm, a shmbus bridge in each, a publisher on A and a subscriber on B.
#
#   sudo examples/bridge_demo.sh            # builds, runs, cleans up (needs root: ip netns)
#
# Machine A (10.77.0.1) exports the topics `demo.*`; machine B (10.77.0.2) imports them. The
# publisher and the subscriber are plain shmbus programs (shmbus-bridge-probe): neither knows
# that the other is on another machine.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p shmbus-zenoh --bins
BIN="$PWD/target/debug"
tag="sbz$$"
A="$tag-a"; B="$tag-b"
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$A"; ip netns add "$B"
ip link add "v$tag" type veth peer name "w$tag"
ip link set "v$tag" netns "$A"; ip link set "w$tag" netns "$B"
ip -n "$A" addr add 10.77.0.1/24 dev "v$tag"; ip -n "$B" addr add 10.77.0.2/24 dev "w$tag"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set "v$tag" up; ip -n "$B" link set "w$tag" up

# A "machine": a process holding a mount namespace with a private /dev/shm, in a network
# namespace; everything else of that machine joins both with nsenter.
machine() {
  ip netns exec "$1" unshare --mount --propagation private \
    sh -c 'mount -t tmpfs -o size=256m tmpfs /dev/shm && exec sleep infinity' &
  pids+=($!)
  host=$!
}
machine "$A"; hostA=$host
machine "$B"; hostB=$host
sleep 0.3
on() { local host=$1; shift; exec nsenter -t "$host" -m -n "$@"; }

(on "$hostA" "$BIN/shmbus-bridge" --listen tcp/10.77.0.1:7447 --export 'demo.*') &
pids+=($!)
(on "$hostB" "$BIN/shmbus-bridge" --connect tcp/10.77.0.1:7447 --import 'demo.*') &
pids+=($!)
sleep 1

echo "== B subscribes, A publishes: plain-old-data, serde and array topics"
for kind in pod serde array; do
  (on "$hostB" "$BIN/shmbus-bridge-probe" recv --topic "demo.$kind" --kind "$kind" --count 200) &
  recv=$!
  sleep 0.3
  (on "$hostA" "$BIN/shmbus-bridge-probe" send --topic "demo.$kind" --kind "$kind" --count 200 \
    --wait-subscribers 1 --settle-ms 500 >/dev/null)
  wait "$recv"
done
echo "== /dev/shm on A, then on B"
(on "$hostA" ls /dev/shm) | sed 's/^/A: /'
(on "$hostB" ls /dev/shm) | sed 's/^/B: /' | grep -v '\.pool\.' || true
