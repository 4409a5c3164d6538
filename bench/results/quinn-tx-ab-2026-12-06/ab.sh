#!/usr/bin/env bash
# Push saturation A/B: base (main 379504e) vs new (quinn-tx), alternated.
set -u
B=/tmp/abq
for r in ${ROUNDS:-1 2 3 4 5 6}; do
  if [ $((r % 2)) = 1 ]; then order="base new"; else order="new base"; fi
  for b in $order; do
    $B/ringgate-bench push --targets ringgate-uring --saturation --ringgate-bin $B/$b --out $B/$b-$r > $B/$b-$r.log 2>&1
    f=$(ls $B/$b-$r/*.json 2>/dev/null | head -1)
    python3 - "$f" "$r" "$b" <<'PY'
import json,sys
try:
    d=json.load(open(sys.argv[1])); p=[x for x in d['push'] if x['mode']=='saturation'][0]
    print(sys.argv[2], sys.argv[3], round(p['msgs_per_s']), round(p['server_cpu_us_per_msg'],3), p['server_cores_busy'], p['missing'], d.get('machine_busy_at_start'))
except Exception as e:
    print(sys.argv[2], sys.argv[3], 'ERR', e)
PY
  done
done
