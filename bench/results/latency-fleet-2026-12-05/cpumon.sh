#!/bin/bash
# per-thread CPU of ringgate nodes and redis over a 3 s window starting $1 s after launch
sleep $1
snap() { for p in $(pgrep -x ringgate) $(pgrep -x redis-server); do for t in /proc/$p/task/*; do echo "$p $(basename $t) $(cat $t/comm) $(awk '{print $14+$15}' $t/stat) $(grep -o 'fleet-n[0-9]\|fleet-single' /proc/$p/cmdline | head -1)"; done; done 2>/dev/null; }
snap > /tmp/fleetp99/cpu0.txt; sleep 3; snap > /tmp/fleetp99/cpu1.txt
join <(awk '{print $1"/"$2, $3, $5, $4}' /tmp/fleetp99/cpu0.txt | sort) <(awk '{print $1"/"$2, $4}' /tmp/fleetp99/cpu1.txt | sort) | awk '{d=$5-$4; if (d>0) print $3, $2, d*10 "ms"}' | sort
