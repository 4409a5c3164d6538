#!/usr/bin/env bash
# Records the ringgate server (io_uring driver) with `perf record -e cpu-clock -g`
# while one bench scenario runs against it, and renders flamegraphs/SCENARIO.svg
# with inferno (through `ringgate-bench flamegraph`, no Perl scripts needed).
#
#   flamegraphs/record.sh push          # push+ack at saturation
#   flamegraphs/record.sh handshake     # full TLS handshakes
#   flamegraphs/record.sh SCENARIO [extra ringgate-bench options]
#
# cpu-clock (a timer, not a hardware counter): this VM exposes no PMU.
# Also writes SCENARIO.folded (collapsed stacks) and SCENARIO.top.txt
# (heaviest frames, inclusive) beside the SVG.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?usage: flamegraphs/record.sh push|handshake|idle|reconnect-storm [ringgate-bench options]}
shift
command -v perf >/dev/null || { echo "perf not found: bench/setup-peers.sh installs linux-perf" >&2; exit 1; }
cargo build --release -p ringgate -p ringgate-bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/ringgate-bench "$scenario" --targets ringgate-uring \
  --perf-record "$work/perf.data" --out "$work/results" "$@" | tee "$work/summary.md"
# --no-inline: resolving inlined frames through addr2line takes minutes on a
# release binary with debug info; the function-level stacks are what we read.
perf script --no-inline -i "$work/perf.data" > "$work/perf.txt" 2>/dev/null
target/release/ringgate-bench flamegraph --perf-script "$work/perf.txt" \
  --svg "flamegraphs/$scenario.svg" --title "ringgate $scenario, io_uring driver (perf -e cpu-clock)" \
  --top 30 | tee "flamegraphs/$scenario.top.txt"
cp "$work/summary.md" "flamegraphs/$scenario.run.md"
