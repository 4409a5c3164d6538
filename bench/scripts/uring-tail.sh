#!/usr/bin/env bash
# io_uring vs epoll push latency at the suite's loads, alternating which
# driver goes first each round (this machine has order effects), then the
# io_uring ring with DEFER_TASKRUN for comparison. Run it on a quiet machine.
#
#   bench/scripts/uring-tail.sh OUT_DIR [ROUNDS]
#   bench/scripts/push_p99_summary.py OUT_DIR/ab
set -euo pipefail
out=${1:?usage: uring-tail.sh OUT_DIR [ROUNDS]}; rounds=${2:-3}
here=$(cd "$(dirname "$0")/../.." && pwd)
bench=$here/target/release/ringgate-bench
mkdir -p "$out/ab" "$out/defer"
rates=(--rate 7600 --rate 19000 --rate 38000 --rate 64000 --saturation)
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then t=ringgate-uring,ringgate-epoll; else t=ringgate-epoll,ringgate-uring; fi
  timeout 300 "$bench" push --targets "$t" "${rates[@]}" --out "$out/ab" >"$out/ab-$r.log" 2>&1
  RINGGATE_URING_SETUP=defer timeout 300 "$bench" push --targets ringgate-uring "${rates[@]}" --out "$out/defer" >"$out/defer-$r.log" 2>&1
done
