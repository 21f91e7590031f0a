# tests/cli/lib.sh -- the helpers the shell tests of `kiln serve` share (not a test itself: the
# CMake glob of tests/cli/*.sh leaves this file out). Source it after `set -u` and KILN=...:
#   . "$(dirname "$0")/lib.sh"          (tests/gpu/*.sh: . "$(dirname "$0")/../cli/lib.sh")
# Sourcing defines functions and sets T0, fails, mark, SUMMARY; it runs nothing else.
#  - lib_tmpdir PREFIX: DIR = a new /tmp/PREFIX_XXXXXX, removed on exit (kept with KILN_TEST_KEEP=1);
#    the exit trap also kills the servers in PID and PID2 (SIGINT first, LIB_GRACE_S seconds, when set)
#  - lib_env [--gpus] [VAR...]: unsets the proxies, CUDA_VISIBLE_DEVICES (not with --gpus),
#    COMFY_*, KILN_ENV_FILE and each VAR; NO_PROXY for loopback; OMP_WAIT_POLICY passive (not with --gpus)
#  - lib_need TOOL...: exits 1 when a tool is missing
#  - fail MSG, passed NAME: count failures, print "ok: NAME (time)" when none since the last passed
#  - js FILE EXPR, req NAME METHOD URL..., expect_code NAME WANT METHOD URL...: JSON and HTTP
#  - lib_tiny_ckpt FILE, lib_serve LOG NPORTS ARGS..., lib_wait_ready LOG PID SECONDS: start-up
#  - wait_history ID [S], status_of ID, wait_running DEV ID: prompts on a running server (URL)
#  - lib_stop_int PID SECONDS, lib_check_sanitizer LOG: a graceful stop and a clean log
# Threads: none; every function runs in the test script's shell. Files go under DIR.

T0=$SECONDS
fails=0
mark=0
SUMMARY=()

# ===== Set-up: temporary folder, environment, tools =====

# lib_tmpdir PREFIX: DIR = a new temporary folder, removed (and servers in PID, PID2 killed) on exit
lib_tmpdir() {
    DIR=$(mktemp -d "/tmp/$1_XXXXXX")
    trap lib__cleanup EXIT
}
lib__cleanup() {
    local p
    for p in ${PID:-} ${PID2:-}; do
        kill -0 "$p" 2>/dev/null || continue
        if [ -n "${LIB_GRACE_S:-}" ]; then kill -INT "$p" 2>/dev/null; sleep "$LIB_GRACE_S"; fi
        kill -KILL "$p" 2>/dev/null
    done
    if [ -n "${KILN_TEST_KEEP:-}" ]; then echo "kept $DIR"; else rm -rf "$DIR"; fi
}

# lib_env [--gpus] [VAR...]: a clean environment for kiln serve; --gpus keeps CUDA_VISIBLE_DEVICES
# and OMP_WAIT_POLICY as they are (the GPU scripts run on the devices the caller chose)
lib_env() {
    if [ "${1:-}" = --gpus ]; then
        shift
    else
        export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
        unset CUDA_VISIBLE_DEVICES
    fi
    unset COMFY_MULTI_GPU_SCHED COMFY_NUM_GPUS KILN_ENV_FILE http_proxy HTTP_PROXY all_proxy "$@"
    export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
}

# lib_need TOOL...: each must be on PATH
lib_need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "FAIL: $(basename "$0") needs $tool (scripts/setup installs it)"; exit 1; }
    done
}

# ===== Counting =====

# fail MSG: one failure (also in SUMMARY)
fail() {
    echo "FAIL: $*"
    SUMMARY+=("FAIL: $*")
    fails=$((fails + 1))
}
# passed NAME: "ok: NAME (time)" when the checks since the last call all passed (also in SUMMARY)
passed() {
    if [ "$fails" = "$mark" ]; then
        echo "ok: $* ($((SECONDS - T0)) s)"
        SUMMARY+=("ok: $*")
    fi
    mark=$fails
}

# ===== JSON and HTTP =====

# js FILE EXPR: the Python expression EXPR over j = the JSON in FILE (strings bare, else JSON)
js() {
    python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
r = eval(sys.argv[2])
print(r if isinstance(r, str) else json.dumps(r))' "$1" "$2"
}

# req NAME METHOD URL [CURL ARGS...]: body in NAME.body, headers in NAME.head; prints the status
# (LIB_REQ_S seconds at most, 30 unless set)
req() {
    local name=$1 method=$2 url=$3
    shift 3
    curl -s -m "${LIB_REQ_S:-30}" -o "$DIR/$name.body" -D "$DIR/$name.head" -w '%{http_code}' -X "$method" "$url" "$@"
}

# expect_code NAME WANT METHOD URL [CURL ARGS...]: the status must be WANT (else fail, return 1)
expect_code() {
    local name=$1 want=$2
    shift 2
    local got
    got=$(req "$name" "$@")
    [ "$got" = "$want" ] && return 0
    fail "$name: $1 $2 -> $got, expected $want: $(head -c 300 "$DIR/$name.body")"
    return 1
}

# ===== Starting kiln serve =====

# lib_tiny_ckpt FILE: a random tiny checkpoint (kiln ckpt --tiny), its folder made; exits on failure
lib_tiny_ckpt() {
    mkdir -p "$(dirname "$1")"
    "$KILN" ckpt --tiny "$1" >/dev/null 2>"$DIR/ckpt.err" ||
        { echo "FAIL: kiln ckpt --tiny: $(cat "$DIR/ckpt.err")"; exit 1; }
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# lib_wait_ready LOG PID SECONDS: until LOG has kiln serve's "ready: URL" line (0, READY_URL set);
# 1 when PID exited first, 2 after SECONDS
lib_wait_ready() {
    local log=$1 pid=$2 i
    READY_URL=
    for ((i = 0; i < $3 * 10; i++)); do
        READY_URL=$(sed -nE 's/.*ready: (http:\/\/[0-9.]+:[0-9]+).*/\1/p' "$log" | head -n 1)
        [ -n "$READY_URL" ] && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 2
}

# lib_serve LOG NPORTS [ARGS...]: kiln serve ARGS on free loopback ports, ready (60 s at most):
# PORT, then NPORTS - 1 device ports after it (--gpu-ports PORT+1 when NPORTS > 1); sets PORT,
# URL and SPID; a port taken meanwhile means other ports; any other failure exits 1
lib_serve() {
    local log=$1 nports=$2 p busy rc
    shift 2
    for _ in 1 2 3 4 5 6 7 8; do
        PORT=$((20000 + RANDOM % 30000))
        busy=0
        for ((p = PORT; p < PORT + nports; p++)); do port_busy "$p" && busy=1; done
        [ "$busy" = 1 ] && continue
        local gports=()
        [ "$nports" -gt 1 ] && gports=(--gpu-ports $((PORT + 1)))
        "$KILN" serve --port "$PORT" ${gports[@]+"${gports[@]}"} "$@" >"$log" 2>&1 &
        SPID=$!
        URL=http://127.0.0.1:$PORT
        lib_wait_ready "$log" "$SPID" 60
        rc=$?
        [ "$rc" = 0 ] && return 0
        if [ "$rc" = 2 ]; then
            kill -KILL "$SPID" 2>/dev/null
            echo "FAIL: kiln serve not ready after 60 s:"; cat "$log"; exit 1
        fi
        grep -qiE 'in use|bind' "$log" && continue # a port was taken meanwhile: try others
        echo "FAIL: kiln serve exited:"; cat "$log"; exit 1
    done
    echo "FAIL: no free ports for kiln serve"; exit 1
}

# ===== Prompts on a running server (URL) =====

# wait_history ID [SECONDS]: polls /history/ID until it is there (ComfyUI's example scripts do
# this; LIB_HISTORY_S seconds unless given, 60 unless set); the entry is left in hist_ID.json
wait_history() {
    local id=$1 limit=${2:-${LIB_HISTORY_S:-60}} i
    for ((i = 0; i < limit * 10; i++)); do
        curl -s -m 10 -o "$DIR/hist_$id.json" "$URL/history/$id"
        if [ -s "$DIR/hist_$id.json" ] && [ "$(head -c 2 "$DIR/hist_$id.json")" != "{}" ]; then return 0; fi
        sleep 0.1
    done
    fail "prompt $id not in /history after $limit s"
    return 1
}

# status_of ID: status_str of a finished prompt (after wait_history)
status_of() { js "$DIR/hist_$1.json" "j['$1']['status']['status_str']"; }

# wait_running DEV ID: until /queue/all shows ID running on DEV (LIB_RUNNING_S seconds, 10 unless set)
wait_running() {
    local i
    for ((i = 0; i < ${LIB_RUNNING_S:-10} * 10; i++)); do
        curl -s -m 10 -o "$DIR/qa.json" "$URL/queue/all"
        [ "$(js "$DIR/qa.json" "str(any(r[1] == '$2' for r in j['queues'][$1]['queue_running']))")" = True ] && return 0
        sleep 0.1
    done
    fail "prompt $2 never ran on device $1"
    return 1
}

# ===== Stopping =====

# lib_stop_int PID SECONDS: SIGINT, then SIGKILL (a failure) when it still runs after SECONDS;
# STOP_RC = its exit status
lib_stop_int() {
    local pid=$1 i
    kill -INT "$pid" 2>/dev/null
    for ((i = 0; i < $2 * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        fail "still running $2 s after SIGINT"
        kill -KILL "$pid"
    fi
    wait "$pid"
    STOP_RC=$?
}

# lib_check_sanitizer LOG: a failure, with the report, when ASan, LSan or UBSan wrote to LOG
lib_check_sanitizer() {
    local pat='AddressSanitizer|LeakSanitizer|runtime error'
    if grep -qE "$pat" "$1"; then
        fail "sanitizer report in the server log ($1):"
        grep -A 30 -E "$pat" "$1" | head -n 60
    fi
}
