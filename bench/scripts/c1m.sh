#!/usr/bin/env bash
# The million-connection run (docs/c1m.md): applies the c1m sysctl profile
# with `ringgate doctor --apply c1m`, runs `ringgate-bench idle-multi`,
# records doctor's view before and after and a once-per-10 s monitor, then
# restores the sysctls it changed. Needs root (sysctls) and ~20 GiB free.
#
#   bench/scripts/c1m.sh OUT_DIR [extra idle-multi flags]
set -euo pipefail
out=${1:?usage: c1m.sh OUT_DIR [flags]}; shift || true
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BIN_DIR:-$here/target/release}
mkdir -p "$out"
log() { echo "$* $(date -u +%FT%TZ)" >>"$out/script.log"; }
log start
"$bin/ringgate" doctor >"$out/doctor-before.txt" 2>&1 || true
saved=$(sysctl -a 2>/dev/null | grep -E '^(fs.file-max|fs.nr_open|net.core.somaxconn|net.core.netdev_max_backlog|net.ipv4.(tcp_max_syn_backlog|tcp_mem|tcp_rmem|tcp_wmem|tcp_max_orphans|tcp_fin_timeout|tcp_tw_reuse|tcp_max_tw_buckets|ip_local_port_range|tcp_keepalive_time|tcp_keepalive_intvl|tcp_keepalive_probes)) =' || true)
"$bin/ringgate" doctor --apply c1m >"$out/doctor-apply.txt" 2>&1
( while sleep 10; do
    printf '%s avail_mib=%s slab_mib=%s tcp_inuse=%s load=%s\n' "$(date -u +%T)" \
      "$(awk '/MemAvailable/{print int($2/1024)}' /proc/meminfo)" "$(awk '/^Slab/{print int($2/1024)}' /proc/meminfo)" \
      "$(awk '/^TCP:/{print $3}' /proc/net/sockstat)" "$(cut -d' ' -f1 /proc/loadavg)"
  done >>"$out/monitor.log" ) &
mon=$!
rc=0
"$bin/ringgate-bench" idle-multi --ringgate-bin "$bin/ringgate" --out "$out" "$@" >"$out/run.log" 2>&1 || rc=$?
log "bench rc=$rc"
kill $mon 2>/dev/null || true
"$bin/ringgate" doctor >"$out/doctor-after.txt" 2>&1 || true
while IFS= read -r line; do
  [ -n "$line" ] && sysctl -q -w "${line%% = *}=${line#* = }" >/dev/null 2>&1 || true
done <<<"$saved"
log restored
exit $rc
