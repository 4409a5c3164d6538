#!/bin/bash
# alternating rounds: base / everysec / floating CPUs; one fleet+single paced pair each
cd /work/wt/fleetp99
R=${ROUNDS:-3}
BIN=${BIN:-/tmp/fleetp99/old/ringgate}
B="/tmp/fleetp99/old/ringgate-bench fleet --out /tmp/fleetp99/res --measure-s 3 --no-saturation --no-kill --mem-users 0 --rounds 1 --ringgate-bin $BIN"
for r in $(seq 1 $R); do
  for cfg in ${CFGS:-base everysec float}; do
    case $cfg in
      base) out=$(timeout 120 $B 2>&1);;
      everysec) out=$(RINGGATE_BENCH_REDIS_APPENDFSYNC=everysec timeout 120 $B 2>&1);;
      float) out=$(timeout 120 $B --server-cpus 0,1 --client-cpus 0,1 --workers 1 2>&1);;
      new) out=$(timeout 120 /tmp/fleetp99/old/ringgate-bench fleet --out /tmp/fleetp99/res --measure-s 3 --no-saturation --no-kill --mem-users 0 --rounds 1 --ringgate-bin /tmp/fleetp99/new-ringgate 2>&1);;
    esac
    echo "$out" | grep -E "^fleet:" | sed "s/^/r$r $cfg load=$(cut -d' ' -f1 /proc/loadavg) /"
  done
done
