#!/usr/bin/env python3
"""Per load and server: the push p99 of every run in a directory of `ringgate-bench push` JSONs, and their median.

    bench/scripts/push_p99_summary.py DIR
"""
import collections
import glob
import json
import sys

rows = collections.defaultdict(list)
for f in sorted(glob.glob(sys.argv[1] + "/push-*.json")):
    for p in json.load(open(f))["push"]:
        lat = p["latency_us"]
        rows[(p["offered_per_s"] or 0, p["target"])].append((lat["p99_us"] / 1000, p["server_cpu_us_per_msg"]))


def med(xs):
    return sorted(xs)[len(xs) // 2]


for (rate, target), v in sorted(rows.items()):
    load = "saturation" if rate == 0 else f"{rate:,.0f} msg/s"
    print(f"{load:>14} {target:<16} p99 ms: {' '.join('%.2f' % x[0] for x in v)} | median {med([x[0] for x in v]):.2f}"
          f" | CPU µs/msg median {med([x[1] for x in v]):.2f}")
