#!/usr/bin/env bash
# Where a message's time goes inside the server, per driver and load: the
# stage trace (RINGGATE_TRACE_STAGES=1) of each server — rx_wait (kernel
# receive timestamp → our recv), outbox_wait (first output of a turn → its
# batch written), push_to_ack (PUSH written → PUSHACK read) — one server per
# load, alternating the order. Lines go to OUT_DIR/trace.txt as
# "round load driver hist…", each histogram p50/p99/p99.9 upper bounds in µs.
#
#   bench/scripts/uring-tail-traced.sh OUT_DIR [ROUNDS]
set -euo pipefail
out=${1:?usage: uring-tail-traced.sh OUT_DIR [ROUNDS]}; rounds=${2:-3}
here=$(cd "$(dirname "$0")/../.." && pwd)
bench=$here/target/release/ringgate-bench
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for rate in 7600 19000 38000 64000 sat; do
    if [ $(( (r + ${#rate}) % 2)) -eq 1 ]; then t=ringgate-uring,ringgate-epoll; else t=ringgate-epoll,ringgate-uring; fi
    if [ "$rate" = sat ]; then a=(); else a=(--rate "$rate"); fi
    keep=$(mktemp -d)
    TMPDIR=$keep RINGGATE_TRACE_STAGES=1 RINGGATE_BENCH_KEEP=1 timeout 200 "$bench" push --targets "$t" "${a[@]}" --out "$out" >"$out/r$r-$rate.log" 2>&1
    for d in uring epoll; do
      f=$(ls "$keep"/ringgate-bench-*/ringgate-$d/server.log | head -1)
      echo "r$r $rate $d $(grep 'stage trace' "$f" | grep -o 'outbox_wait_us\[[^]]*\]\|rx_wait_us\[[^]]*\]\|push_to_ack_us\[[^]]*\]' | paste -sd' ')" >>"$out/trace.txt"
    done
    rm -rf "$keep"
  done
done
