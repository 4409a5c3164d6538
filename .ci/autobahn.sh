#!/usr/bin/env bash
# Autobahn|Testsuite's fuzzing client against the gateway's own WebSocket
# codec: wss://127.0.0.1:PORT/v1/ws, every case except performance (9.*)
# and compression (12.*, 13.*, no permessage-deflate here).
#
# The gateway is not an echo server, so the server runs with the test-only
# switch RINGGATE_TEST_WS_ECHO=1 (refused unless it listens on loopback):
# /v1/ws then echoes text and binary messages through the same decoder,
# UTF-8 checks, control-frame and close rules as in production.
#
# Autobahn|Testsuite 0.8.2 runs on Python 2.7 only. This script finds one
# ($AUTOBAHN_PYTHON, python2.7 on PATH, or pyenv's 2.7.x), installs the
# pinned dependencies of .ci/autobahn-requirements.txt with
# `pip --no-deps --ignore-installed` into a prefix under target/ (reused
# while the requirements file is unchanged), runs the suite, prints a
# summary table and exits non-zero on any FAILED case. It never skips: no
# Python 2.7, no install, no server, too few cases: all are failures.
#
# Usage: .ci/autobahn.sh            (reports in target/autobahn/reports/)
#        AUTOBAHN_CASES='["6.*"]' .ci/autobahn.sh   (a subset, for local work)
set -euo pipefail
cd "$(dirname "$0")/.."
# cryptography 3.3 warns on every start that Python 2 is deprecated.
export PYTHONWARNINGS=ignore
ROOT=$PWD
OUT="$ROOT/target/autobahn"
mkdir -p "$OUT"

die() {
    echo "autobahn: $*" >&2
    exit 1
}

# --- Python 2.7 -------------------------------------------------------------
is_py27() { [ -x "$1" ] && "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' 2>/dev/null; }

find_py27() {
    local c
    for c in "${AUTOBAHN_PYTHON:-}" "$(command -v python2.7 || true)" \
        "$(command -v pyenv >/dev/null && pyenv root 2>/dev/null || true)"/versions/2.7*/bin/python2.7 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python2.7 /root/.pyenv/versions/2.7*/bin/python2.7 \
        /usr/local/bin/python2.7 /usr/bin/python2.7; do
        if [ -n "$c" ] && is_py27 "$c"; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

PY=$(find_py27 || true)
if [ -z "$PY" ] && command -v pyenv >/dev/null; then
    # Builds CPython 2.7 from source (needs its download site and build deps).
    echo "autobahn: no Python 2.7 found; trying 'pyenv install 2.7.18'" >&2
    pyenv install -s 2.7.18 >&2 || true
    PY=$(find_py27 || true)
fi
[ -n "$PY" ] || die "Autobahn|Testsuite needs Python 2.7 and none was found (looked at \$AUTOBAHN_PYTHON, python2.7 on PATH, ~/.pyenv/versions/2.7*); install one (e.g. 'pyenv install 2.7.18') or point AUTOBAHN_PYTHON at it"
echo "autobahn: Python 2.7 at $PY"

# --- the suite, pinned ------------------------------------------------------
REQ="$ROOT/.ci/autobahn-requirements.txt"
PREFIX="$OUT/py-$(sha256sum "$REQ" | cut -c1-12)"
SITE="$PREFIX/lib/python2.7/site-packages"
if [ ! -f "$PREFIX/.installed" ]; then
    rm -rf "$PREFIX"
    "$PY" -m pip --version >/dev/null 2>&1 || "$PY" -m ensurepip >&2 || die "no pip for $PY"
    pipi() { PYTHONPATH="$SITE" "$PY" -m pip install -q --disable-pip-version-check --no-warn-script-location \
        --no-deps --ignore-installed --prefix "$PREFIX" "$@" 2>&1 | grep -v 'DEPRECATION: Python 2.7' >&2 || true; }
    # Twisted's setup.py needs `incremental` importable first (else
    # setuptools fetches the newest, which no longer installs on 2.7).
    pipi "$(grep -i '^incremental==' "$REQ")"
    pipi -r "$REQ"
    # pipi swallows pip's status (to filter its warning): check the result.
    "$PY" -c 'import site, sys; site.addsitedir(sys.argv[1]); import autobahntestsuite.wstest' "$SITE" ||
        die "the suite's dependencies did not install (see pip's output above)"
    touch "$PREFIX/.installed"
fi

# --- the server -------------------------------------------------------------
cargo build --release --workspace --tests >&2
BIN="$ROOT/target/release/ringgate"
WORK=$(mktemp -d /tmp/ringgate-autobahn.XXXXXX)
SERVER=
cleanup() {
    if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
cat >"$WORK/ringgate.toml" <<EOF
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
workers = 2
[tls]
enabled = true
[session]
# Echo connections never send CONNECT: the handshake deadline must outlast
# the longest case (a few seconds of deliberate delays).
handshake_timeout_ms = 120000
# Case 7.1.6 sends a 256 KiB message.
max_frame = 1048576
[store]
data_dir = "$WORK/data"
durability = "memory"
[limits]
# ~300 connections in quick succession from one address.
connect_rate_per_ip = 100000
connect_rate = 100000
EOF
RINGGATE_TEST_WS_ECHO=1 RUST_LOG=info NO_COLOR=1 "$BIN" serve --config "$WORK/ringgate.toml" 2>"$WORK/server.log" >/dev/null &
SERVER=$!
PORT=
for _ in $(seq 1 300); do
    PORT=$(sed -n 's/.*listening addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/server.log" | head -n1)
    [ -n "$PORT" ] && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server.log" >&2; die "the server exited before listening"; }
    sleep 0.1
done
[ -n "$PORT" ] || { cat "$WORK/server.log" >&2; die "the server did not listen within 30 s"; }
echo "autobahn: ringgate (echo mode) on wss://127.0.0.1:$PORT/v1/ws"

# --- the run ----------------------------------------------------------------
REPORTS="$OUT/reports"
rm -rf "$REPORTS"
CASES=${AUTOBAHN_CASES:-'["*"]'}
cat >"$WORK/fuzzingclient.json" <<EOF
{
  "outdir": "$REPORTS",
  "servers": [{"agent": "ringgate", "url": "wss://127.0.0.1:$PORT/v1/ws"}],
  "cases": $CASES,
  "exclude-cases": ["9.*", "12.*", "13.*"],
  "exclude-agent-cases": {}
}
EOF
start=$(date +%s)
(cd "$WORK" && timeout 600 "$PY" -c 'import site, sys; site.addsitedir(sys.argv.pop(1)); sys.argv[0] = "wstest"
from autobahntestsuite.wstest import run; run()' "$SITE" -m fuzzingclient -s "$WORK/fuzzingclient.json" >"$OUT/wstest.log" 2>&1) ||
    { tail -n 40 "$OUT/wstest.log" >&2; die "wstest failed (log: $OUT/wstest.log)"; }
echo "autobahn: suite ran in $(($(date +%s) - start)) s"
kill -0 "$SERVER" 2>/dev/null || { tail -n 40 "$WORK/server.log" >&2; die "the server died during the run"; }
if grep -q panicked "$WORK/server.log"; then grep -B2 -A10 panicked "$WORK/server.log" >&2; die "the server panicked"; fi
cp "$WORK/server.log" "$OUT/server.log"

# --- the verdict ------------------------------------------------------------
# Exit status: 0 only with no FAILED case (behaviour or closing behaviour),
# and at least AUTOBAHN_MIN_CASES cases run (the full selection is 247 cases).
"$PY" - "$REPORTS/index.json" "${AUTOBAHN_MIN_CASES:-247}" <<'PYEOF'
import json, sys
report = json.load(open(sys.argv[1]))
cases = report["ringgate"]
kinds = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
names = {"1": "Framing", "2": "Pings/Pongs", "3": "Reserved bits", "4": "Opcodes", "5": "Fragmentation",
         "6": "UTF-8", "7": "Close handling", "10": "Misc"}

def verdict(r):
    if "FAILED" in (r["behavior"], r["behaviorClose"]):
        return "FAILED"
    return r["behavior"] if r["behavior"] in kinds else "FAILED"

rows, total = {}, dict((k, 0) for k in kinds)
for cid, r in cases.items():
    v = verdict(r)
    row = rows.setdefault(cid.split(".")[0], dict((k, 0) for k in kinds))
    row[v] += 1
    total[v] += 1
fmt = "%-20s" + " %13s" * len(kinds) + " %6s"
print(fmt % tuple(["group"] + kinds + ["total"]))
for g in sorted(rows, key=int):
    print(fmt % tuple(["%s %s" % (g, names.get(g, ""))] + [rows[g][k] for k in kinds] + [sum(rows[g].values())]))
print(fmt % tuple(["all"] + [total[k] for k in kinds] + [len(cases)]))
key = lambda c: [int(x) for x in c.split(".")]
for v in ["NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]:
    ids = sorted((c for c in cases if verdict(cases[c]) == v), key=key)
    if ids:
        print("%s: %s" % (v, " ".join(ids)))
for c in sorted((c for c in cases if verdict(cases[c]) == "FAILED"), key=key):
    r = cases[c]
    print("  %s: behavior %s, close %s, remote close code %s (%s)" % (c, r["behavior"], r["behaviorClose"], r.get("remoteCloseCode"), r.get("reportfile")))
failed = total["FAILED"]
if len(cases) < int(sys.argv[2]):
    print("autobahn: only %d cases ran (expected at least %s)" % (len(cases), sys.argv[2]))
    failed = failed or 1
print("autobahn: %d passed, %d failed" % (len(cases) - total["FAILED"], total["FAILED"]))
sys.exit(1 if failed else 0)
PYEOF
