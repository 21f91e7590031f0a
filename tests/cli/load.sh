#!/usr/bin/env bash
# tests/cli/load.sh -- the load test of issue 6 (item 5): `kiln serve --cpu --cpu-workers 3` on a
# random tiny checkpoint, then tests/load/load.py (standard library only) has CLIENTS threads submit
# PROMPTS prompts, valid and invalid mixed, while 10 threads open and drop WebSockets; it checks
# that each accepted prompt has exactly one /history entry, each invalid one got a 4xx with an
# error body, no 5xx, and prints p50/p99/max of the POST /prompt latency. Then SIGINT: graceful
# exit 0, no sanitizer report in the server log.
# Usage: load.sh KILN_BINARY SOURCE_DIR [PROMPTS [CLIENTS]] (as CTest calls it: 200 prompts from
# 20 clients, ~50 s under ASan, where the 3 workers run ~4 prompts/s; docs/PERF.md has the 2,000 / 50 run).
set -u
KILN=$(realpath "${1:?kiln binary}")
SRC=$(realpath "${2:?source dir}")
PROMPTS=${3:-200}
CLIENTS=${4:-20}
DIR=$(mktemp -d /tmp/kiln_cli_load_XXXXXX)
PID=
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null; fi
    if [ -n "${KILN_TEST_KEEP:-}" ]; then echo "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
cd "$DIR" || exit 1
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
unset CUDA_VISIBLE_DEVICES COMFY_MULTI_GPU_SCHED COMFY_NUM_GPUS KILN_ENV_FILE KILN_API_TOKEN http_proxy HTTP_PROXY all_proxy
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
command -v python3 >/dev/null || { echo "FAIL: load.sh needs python3"; exit 1; }
T0=$SECONDS

# ===== Start the server (free loopback ports, as serve.sh does) =====
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
answers() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; }

mkdir -p "$DIR/models/checkpoints"
"$KILN" ckpt --tiny "$DIR/models/checkpoints/tiny.safetensors" >/dev/null 2>"$DIR/ckpt.err" ||
    { echo "FAIL: kiln ckpt --tiny: $(cat "$DIR/ckpt.err")"; exit 1; }

LOG=$DIR/server.log
started=0
for _ in 1 2 3 4 5 6 7 8; do
    PORT=$((20000 + RANDOM % 30000))
    GPORT=$((PORT + 1))
    busy=0
    for p in $PORT $GPORT $((GPORT + 1)) $((GPORT + 2)); do port_busy "$p" && busy=1; done
    [ "$busy" = 1 ] && continue
    "$KILN" serve --cpu --port "$PORT" --gpu-ports "$GPORT" --cpu-workers 3 --threads 1 \
        --models-dir "$DIR/models" --output-directory "$DIR/output" --input-directory "$DIR/input" \
        --temp-dir "$DIR/temp" --max-upload-size 1 >"$LOG" 2>&1 &
    PID=$!
    URL=http://127.0.0.1:$PORT
    for ((i = 0; i < 600; i++)); do
        if answers "$URL/prompt"; then started=1; break; fi
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    [ "$started" = 1 ] && break
    if kill -0 "$PID" 2>/dev/null; then
        echo "FAIL: kiln serve does not answer after 60 s:"; cat "$LOG"; exit 1
    fi
    grep -qiE 'in use|bind' "$LOG" && continue # a port was taken meanwhile: try others
    echo "FAIL: kiln serve exited:"; cat "$LOG"; exit 1
done
[ "$started" = 1 ] || { echo "FAIL: no free ports for kiln serve"; exit 1; }

# ===== The load =====
fails=0
python3 "$SRC/tests/load/load.py" 127.0.0.1 "$PORT" --prompts "$PROMPTS" --clients "$CLIENTS" \
    --ws-clients 10 --max-body $((1 << 20)) --drain-timeout 300 --json "$DIR/figures.json" || fails=1
kill -0 "$PID" 2>/dev/null || { echo "FAIL: kiln serve died under load"; fails=1; }

# ===== SIGINT: graceful, and no sanitizer report =====
if kill -0 "$PID" 2>/dev/null; then
    kill -INT "$PID"
    for ((i = 0; i < 200; i++)); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$PID" 2>/dev/null; then
        echo "FAIL: still running 20 s after SIGINT"; fails=1
        kill -KILL "$PID"
    fi
fi
wait "$PID"
rc=$?
PID=
[ "$rc" = 0 ] || { echo "FAIL: kiln serve exited $rc, expected 0 after SIGINT"; fails=1; }
if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$LOG"; then
    echo "FAIL: sanitizer report in the server log:"
    grep -A 30 -E 'AddressSanitizer|LeakSanitizer|runtime error' "$LOG" | head -n 60
    fails=1
fi
if [ "$fails" -ne 0 ]; then
    echo "load.sh: failed; server log tail:"
    tail -n 30 "$LOG"
    exit 1
fi
echo "load.sh: all passed in $((SECONDS - T0)) s"
