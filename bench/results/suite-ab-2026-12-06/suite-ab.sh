#!/usr/bin/env bash
# Whole-suite A/B: base (before issue 20) vs new, alternated; other work stopped.
set -u
cd /work/main
others() {
  for p in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$p" = "$$" ] && continue
    c=$(readlink /proc/$p/cwd 2>/dev/null) || continue
    cmd=$(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null)
    case "$c" in /work/wt-fleet-gaps*|/work/wt-quinn-tx*) echo $p; continue;; esac
    case "$cmd" in */tmp/ws_codec.bin*|*/tmp/core_events.bin*) echo $p;; esac
  done
}
run() { # name bin
  local ps; ps=$(others); kill -STOP $ps 2>/dev/null
  echo "$(date -u +%T) $1 stopped: $(echo $ps | wc -w) procs"
  target/release/ringgate-bench suite --ringgate-bin "$2" --targets ringgate-uring,ringgate-ws-uring --out /tmp/ab/$1 --wait-quiet-s 20 --rate 27000,66000,130000,190000,230000,250000 > /tmp/ab/$1.log 2>&1
  echo "$(date -u +%T) $1 rc=$?"
  kill -CONT $ps 2>/dev/null; kill -CONT $(others) 2>/dev/null
  sleep ${PAUSE:-60}
}
for r in $ROUNDS; do
  if [ $((r % 2)) = 1 ]; then run base-$r /tmp/ringgate-base; run new-$r /tmp/ringgate-new
  else run new-$r /tmp/ringgate-new; run base-$r /tmp/ringgate-base; fi
done
