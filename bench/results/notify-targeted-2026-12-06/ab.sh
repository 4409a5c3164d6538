#!/bin/bash
# A/B alternated: old (0a36488: broadcast notifications on rg:n) vs new (targeted), fleet paced rounds.
cd /work/wt-fleet-gaps
R=${ROUNDS:-4}
run() { # tag bin
  out=$(timeout 150 /tmp/fg-ab/ringgate-bench fleet --out ${OUT:-/tmp/fg-ab/res} --measure-s 3 --no-saturation --no-kill --mem-users 0 --rounds 1 --ringgate-bin $2 2>&1)
  echo "$out" | grep -E "^fleet:" | sed "s/^/r$r $1 load=$(cut -d' ' -f1 /proc/loadavg) /"
}
for r in $(seq 1 $R); do
  if [ $((r % 2)) = 1 ]; then run old /tmp/fg-ab/ringgate-old; run new /tmp/fg-ab/ringgate-new
  else run new /tmp/fg-ab/ringgate-new; run old /tmp/fg-ab/ringgate-old; fi
done
