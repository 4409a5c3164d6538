#!/usr/bin/env bash
# Installs the peers the suite compares ringgate with (nginx, Mosquitto, and
# Node.js with the `ws` package for the WebSocket scenarios) and perf for
# flamegraphs, from Debian packages. Run as root (it uses apt-get).
# The packaged services are not started: the harness starts each peer on a
# free loopback port with its own generated config and certificate.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-peers.sh: run as root (apt-get install)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
# linux-perf: `perf` for flamegraphs/record.sh (only cpu-clock works in this VM).
apt-get install -y --no-install-recommends nginx mosquitto linux-perf
# node-ws: the `ws` package (/usr/share/nodejs) for bench/peers/ws-relay.cjs;
# nodejs only when no node is installed (keep a newer one from elsewhere).
command -v node >/dev/null || apt-get install -y --no-install-recommends nodejs
apt-get install -y --no-install-recommends node-ws
# Debian may start the packaged daemons where an init system runs; they
# would compete for CPU with the measured ones, so stop them if they did.
for svc in nginx mosquitto; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  elif command -v service >/dev/null 2>&1; then
    service "$svc" stop >/dev/null 2>&1 || true
  fi
done
nginx -v
mosquitto -h 2>&1 | head -1 || true  # `-h` exits 3
perf --version
echo "node $(node --version), ws $(NODE_PATH=/usr/share/nodejs node -e "process.stdout.write(require('ws/package.json').version)")"
