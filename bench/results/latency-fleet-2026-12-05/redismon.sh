#!/bin/bash
# waits for the bench's redis-server, enables latency monitor, samples at end
for i in $(seq 1 100); do
  P=$(pgrep -n -x redis-server) && break; sleep 0.2
done
PORT=$(ss -ltnp | grep "pid=$P," | grep -o '127.0.0.1:[0-9]*' | head -1 | cut -d: -f2)
sleep 1
redis-cli -p $PORT CONFIG SET latency-monitor-threshold 1 >/dev/null
redis-cli -p $PORT CONFIG RESETSTAT >/dev/null
while kill -0 $P 2>/dev/null; do
  redis-cli -p $PORT LATENCY HISTORY aof-fsync-always > /tmp/fleetp99/lat-fsync.txt 2>/dev/null
  redis-cli -p $PORT LATENCY LATEST > /tmp/fleetp99/lat-latest.txt 2>/dev/null
  redis-cli -p $PORT INFO latencystats > /tmp/fleetp99/latstats.txt 2>/dev/null
  redis-cli -p $PORT INFO commandstats > /tmp/fleetp99/cmdstats.txt 2>/dev/null
  redis-cli -p $PORT INFO stats > /tmp/fleetp99/stats.txt 2>/dev/null; redis-cli -p $PORT INFO persistence > /tmp/fleetp99/pers.txt; ls -la $(ls -d /tmp/*/redis 2>/dev/null) > /dev/null
  sleep 1
done
