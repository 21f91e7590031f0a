#!/usr/bin/env bash
# tests/cli/load.sh -- the load test of issue 6 (item 5): `kiln serve --cpu --cpu-workers 3` on a
# random tiny checkpoint, then tests/load/load.py (standard library only) has CLIENTS threads submit
# PROMPTS prompts, valid and invalid mixed, while 10 threads open and drop WebSockets; it checks
# that each accepted prompt has exactly one /history entry, each invalid one got a 4xx with an
# error body, no 5xx, and prints p50/p99/max of the POST /prompt latency. Then SIGINT: graceful
# exit 0, no sanitizer report in the server log.
# LOAD_PROCS=K spreads the clients over K processes (load.py --procs; default 1); LOAD_RATE=R sends
# at R requests per second in all, open loop (load.py --rate; default 0: closed loop).
# Usage: load.sh KILN_BINARY SOURCE_DIR [PROMPTS [CLIENTS]] (as CTest calls it: 200 prompts from
# 20 clients, ~50 s under ASan, where the 3 workers run ~4 prompts/s; docs/PERF.md has the 2,000 / 50 run).
set -u
KILN=$(realpath "${1:?kiln binary}")
SRC=$(realpath "${2:?source dir}")
PROMPTS=${3:-200}
CLIENTS=${4:-20}
. "$(dirname "$0")/lib.sh"
lib_tmpdir kiln_cli_load
PID=
cd "$DIR" || exit 1
lib_env KILN_API_TOKEN
lib_need python3

# ===== Start the server (free loopback ports, as serve.sh does) =====
lib_tiny_ckpt "$DIR/models/checkpoints/tiny.safetensors"
LOG=$DIR/server.log
lib_serve "$LOG" 4 --cpu --cpu-workers 3 --threads 1 --models-dir "$DIR/models" --output-directory "$DIR/output" \
    --input-directory "$DIR/input" --temp-dir "$DIR/temp" --max-upload-size 1
PID=$SPID

# ===== The load =====
python3 "$SRC/tests/load/load.py" 127.0.0.1 "$PORT" --prompts "$PROMPTS" --clients "$CLIENTS" \
    --ws-clients 10 --max-body $((1 << 20)) --drain-timeout 300 --json "$DIR/figures.json" --procs "${LOAD_PROCS:-1}" --rate "${LOAD_RATE:-0}" ||
    fails=$((fails + 1))
kill -0 "$PID" 2>/dev/null || fail "kiln serve died under load"

# ===== SIGINT: graceful, and no sanitizer report =====
rc=0
if kill -0 "$PID" 2>/dev/null; then
    lib_stop_int "$PID" 20
    rc=$STOP_RC
else
    wait "$PID"
    rc=$?
fi
PID=
[ "$rc" = 0 ] || fail "kiln serve exited $rc, expected 0 after SIGINT"
lib_check_sanitizer "$LOG"
if [ "$fails" -ne 0 ]; then
    echo "load.sh: failed; server log tail:"
    tail -n 30 "$LOG"
    exit 1
fi
echo "load.sh: all passed in $((SECONDS - T0)) s"
