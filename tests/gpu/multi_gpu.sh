#!/usr/bin/env bash
# tests/gpu/multi_gpu.sh -- `kiln serve` on every GPU of a machine with 2 or more, by hand (not
# part of ctest): one queue per GPU in /queue/all; one slow prompt pinned to each GPU
# (X-TARGET-GPU) and their history timestamps (execution_start .. execution_success) overlap;
# queue isolation (a prompt for GPU 1 starts while GPU 0 is busy; clearing GPU 0's queue leaves
# GPU 1's); an out-of-memory workflow on GPU 0 ends in an execution_error naming out of memory
# while GPU 1's prompts succeed and the server stays up; GPUMemoryCleanup clear_all_gpus and
# GPUMemoryReserve acting on the other GPU. Prints a summary; exits 1 on any failure.
#
# Usage:
#   multi_gpu.sh KILN_BINARY [MODELS_DIR]            every GPU (`kiln serve`, no --cpu)
#   multi_gpu.sh KILN_BINARY [MODELS_DIR] --cpu N    dry run on N CPU devices (--cpu --cpu-workers N),
#                                                    for machines without GPUs; the OOM part is skipped
# or the same through the environment: KILN_BIN, KILN_MODELS, KILN_MG_CPU=N.
# MODELS_DIR needs checkpoints/$KILN_MG_CKPT (default tiny.safetensors); without MODELS_DIR a
# temporary one gets a random tiny checkpoint from `kiln ckpt --tiny`. Other knobs:
#   KILN_MG_SIZE, KILN_MG_STEPS   the slow prompt (default 512 px, 20 steps on GPUs; 64 px, 4 steps
#                                 on CPUs); steps are raised until one prompt takes >= KILN_MG_SLOW_S
#                                 seconds (default 3 on GPUs, 1.5 on CPUs)
#   KILN_MG_OOM_SIZE, KILN_MG_OOM_BATCH   the out-of-memory latent (default 4096, 16)
#   KILN_MG_OOM_CKPT              the checkpoint of the out-of-memory prompt (default KILN_MG_CKPT);
#                                 a GPU with a lot of memory decodes even 16384 px with the tiny
#                                 VAE, so on an H200 use a full SD 1.5 one (`kiln ckpt --sd15`)
#                                 at 16384 px, batch 1
#   KILN_TEST_KEEP=1              keep the temporary folder (server log, bodies) for a look
# Through the lead's device tool, e.g.:
#   cmake -S . -B build/gpu -DKILN_CUDA=ON && cmake --build build/gpu -j16 kiln &&
#   bash tests/gpu/multi_gpu.sh build/gpu/kiln
# Needs curl and python3.
set -u
KILN=${1:-${KILN_BIN:-}}
[ -n "$KILN" ] || { sed -n 2,30p "$0"; exit 2; }
KILN=$(realpath "$KILN")
MODELS=${KILN_MODELS:-}
CPU=${KILN_MG_CPU:-0}
shift
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) CPU=${2:?--cpu N}; shift 2 ;;
        *) MODELS=$1; shift ;;
    esac
done
CKPT=${KILN_MG_CKPT:-tiny.safetensors}
. "$(dirname "$0")/../cli/lib.sh"
lib_tmpdir kiln_multi_gpu
PID=
LIB_GRACE_S=2 LIB_REQ_S=60 LIB_HISTORY_S=600 LIB_RUNNING_S=60 # GPU prompts are slower
lib_env --gpus
lib_need curl python3

skipped() { echo "skipped: $*"; SUMMARY+=("skipped: $*"); }

# ===== Helpers =====

# wf OUT SEED STEPS SIZE PREFIX [BATCH]: a POST /prompt body from examples/demo.json (txt2img:
# KSampler, VAEDecode, SaveImage) on $CKPT
wf() {
    python3 - "$SRC_DEMO" "$CKPT" "$@" <<'EOF'
import json, sys
src, ckpt, out, seed, steps, size, prefix = sys.argv[1:8]
batch = int(sys.argv[8]) if len(sys.argv) > 8 else 1
p = json.load(open(src))
p["4"]["inputs"]["ckpt_name"] = ckpt
p["3"]["inputs"].update(seed=int(seed), steps=int(steps))
p["5"]["inputs"].update(width=int(size), height=int(size), batch_size=batch)
p["9"]["inputs"]["filename_prefix"] = prefix
json.dump({"prompt": p}, open(out, "w"))
EOF
}

# oom_wf OUT: EmptyLatentImage SIZE x SIZE at BATCH straight into VAEDecode and PreviewImage
oom_wf() {
    python3 - "${KILN_MG_OOM_CKPT:-$CKPT}" "$1" "${KILN_MG_OOM_SIZE:-4096}" "${KILN_MG_OOM_BATCH:-16}" <<'EOF'
import json, sys
ckpt, out, size, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
p = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
    "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
}
json.dump({"prompt": p}, open(out, "w"))
EOF
}

# node_wf OUT CLASS INPUTS_JSON: a one-node prompt
node_wf() {
    python3 -c 'import json, sys
json.dump({"prompt": {"1": {"class_type": sys.argv[2], "inputs": json.loads(sys.argv[3])}}}, open(sys.argv[1], "w"))' "$@"
}

# submit NAME DEV BODYFILE: POST /prompt pinned with X-TARGET-GPU: DEV, must be 200; prints the id
submit() {
    local code
    code=$(req "$1" POST "$URL/prompt" -H 'Content-Type: application/json' -H "X-TARGET-GPU: $2" --data-binary "@$3")
    if [ "$code" != 200 ]; then
        fail "$1: POST /prompt on device $2 -> $code: $(head -c 300 "$DIR/$1.body")"
        return 1
    fi
    js "$DIR/$1.body" 'j["prompt_id"]'
}

# stamp ID TYPE: the timestamp (ms) of the history message TYPE of a finished prompt ('' if none)
stamp() { js "$DIR/hist_$1.json" "next((str(d['timestamp']) for t, d in j['$1']['status']['messages'] if t == '$2'), '')"; }
# report ID NODE: the text report of a GPU memory node
report() { js "$DIR/hist_$1.json" "j['$1']['outputs']['$2']['text'][0]"; }

# ===== Process RSS (measured by the lead) =====
# RSS MEASUREMENT HOOK: the lead's host-memory checks go here. rss_point LABEL is called at the
# marked points below (after start-up, after the parallel prompts, after the OOM prompt); it
# only records VmRSS of the server now. Put thresholds or a sampler here.
RSS_LOG=$DIR/rss.log
rss_point() {
    local kb
    kb=$(sed -nE 's/^VmRSS:[[:space:]]+([0-9]+) kB/\1/p' "/proc/$PID/status" 2>/dev/null)
    echo "$1 ${kb:-?} kB" >>"$RSS_LOG"
    echo "rss: $1: ${kb:-?} kB"
}

# ===== Start the server =====

SRC_DEMO=$(dirname "$(realpath "$0")")/../../examples/demo.json
[ -f "$SRC_DEMO" ] || { echo "FAIL: no examples/demo.json next to the script's tests/"; exit 1; }
if [ -z "$MODELS" ]; then
    MODELS=$DIR/models
    lib_tiny_ckpt "$MODELS/checkpoints/$CKPT"
fi
MODELS=$(realpath "$MODELS")
[ -f "$MODELS/checkpoints/$CKPT" ] || { echo "FAIL: no $MODELS/checkpoints/$CKPT"; exit 1; }

if [ "$CPU" -gt 0 ]; then
    MODE_ARGS=(--cpu --cpu-workers "$CPU" --threads 1)
    WANT_DEV=$CPU
    SIZE=${KILN_MG_SIZE:-64}
    STEPS=${KILN_MG_STEPS:-4}
    SLOW_S=${KILN_MG_SLOW_S:-1.5}
    echo "dry run: $CPU CPU devices (no GPU checks)"
else
    MODE_ARGS=() # every GPU the CUDA runtime sees, no CPU device beside them
    WANT_DEV=$("$KILN" gpus 2>/dev/null | sed -nE 's/.*the CUDA runtime sees ([0-9]+) device.*/\1/p')
    SIZE=${KILN_MG_SIZE:-512}
    STEPS=${KILN_MG_STEPS:-20}
    SLOW_S=${KILN_MG_SLOW_S:-3}
    [ "${WANT_DEV:-0}" -ge 2 ] || { echo "FAIL: this machine shows ${WANT_DEV:-0} GPUs; the script needs 2 or more (or --cpu N)"; exit 1; }
fi

LOG=$DIR/server.log
mkdir -p "$DIR/output" "$DIR/input" "$DIR/temp"
"$KILN" serve --port 0 ${MODE_ARGS[@]+"${MODE_ARGS[@]}"} --models-dir "$MODELS" --output-directory "$DIR/output" \
    --input-directory "$DIR/input" --temp-dir "$DIR/temp" >"$LOG" 2>&1 &
PID=$!
lib_wait_ready "$LOG" "$PID" 180 # GPU workers warm up and open their devices first
case $? in
    1) echo "FAIL: kiln serve exited:"; cat "$LOG"; exit 1 ;;
    2) echo "FAIL: kiln serve not ready after 180 s:"; cat "$LOG"; exit 1 ;;
esac
URL=$READY_URL
echo "server: $URL (log $LOG)"
grep -E 'warm-up|opened' "$LOG" | sed 's/^/  /'
rss_point "after start-up"

# ===== One queue per device =====
[ "$(req qa0 GET "$URL/queue/all")" = 200 ] || fail "GET /queue/all"
NDEV=$(js "$DIR/qa0.body" 'len(j["queues"])')
[ "$NDEV" = "$WANT_DEV" ] || fail "/queue/all lists $NDEV queues, expected $WANT_DEV"
[ "$(js "$DIR/qa0.body" '[q["gpu_id"] for q in j["queues"]]')" = "$(python3 -c "print(list(range($NDEV)))")" ] ||
    fail "/queue/all gpu_ids: $(cat "$DIR/qa0.body")"
[ "$(js "$DIR/qa0.body" '[j["total_running"], j["total_pending"]]')" = '[0, 0]' ] || fail "/queue/all not empty at start"
[ "$NDEV" -ge 2 ] || { fail "fewer than 2 devices"; NDEV=2; }
passed "/queue/all: one queue per device ($NDEV)"

# ===== Calibrate the slow prompt on device 0 (also loads the checkpoint there) =====
for try in 1 2 3 4; do
    wf "$DIR/cal.json" 1 "$STEPS" "$SIZE" cal
    t0=$(date +%s.%N)
    id=$(submit cal 0 "$DIR/cal.json") && wait_history "$id" || break
    dt=$(python3 -c "print($(date +%s.%N) - $t0)")
    [ "$(status_of "$id")" = success ] || { fail "calibration prompt: $(status_of "$id")"; break; }
    echo "  $SIZE px, $STEPS steps: $(printf %.2f "$dt") s"
    python3 -c "import sys; sys.exit(0 if $dt >= $SLOW_S else 1)" && break
    STEPS=$(python3 -c "import math; print(min(1000, max($STEPS + 1, math.ceil($STEPS * $SLOW_S * 1.3 / max($dt, 0.05)))))")
done
passed "slow prompt: $SIZE px, $STEPS steps"

# ===== One slow prompt per device, at the same time =====
ids=()
for ((d = 0; d < NDEV; d++)); do
    wf "$DIR/par$d.json" $((100 + d)) "$STEPS" "$SIZE" "par$d"
    ids+=("$(submit "par$d" "$d" "$DIR/par$d.json")")
done
starts=() ends=()
for ((d = 0; d < NDEV; d++)); do
    id=${ids[$d]}
    wait_history "$id" || continue
    [ "$(status_of "$id")" = success ] || fail "parallel prompt on device $d: $(status_of "$id")"
    starts+=("$(stamp "$id" execution_start)")
    ends+=("$(stamp "$id" execution_success)")
done
if [ "${#ends[@]}" = "$NDEV" ]; then
    python3 - "${starts[*]}" "${ends[*]}" <<'EOF' || fail "the per-device prompts did not overlap in time"
import sys
s = [int(x) for x in sys.argv[1].split()]
e = [int(x) for x in sys.argv[2].split()]
for i, (a, b) in enumerate(zip(s, e)):
    print("  device %d: %d .. %d ms (%.2f s)" % (i, a - min(s), b - min(s), (b - a) / 1000))
overlap = min(e) - max(s)
print("  common window: %d ms" % overlap)
sys.exit(0 if overlap > 0 else 1)
EOF
fi
rss_point "after the parallel prompts"
passed "one prompt per device ran in parallel (history timestamps overlap)"

# ===== Queue isolation =====
# GPU 0: one running (twice the steps), two pending; GPU 1: one running, one pending. Seeds
# differ so no prompt is served from the output cache.
wf "$DIR/iso_a0.json" 200 $((2 * STEPS)) "$SIZE" iso
wf "$DIR/iso_a1.json" 201 $((2 * STEPS)) "$SIZE" iso
for k in 202 203 204; do wf "$DIR/iso_$k.json" "$k" "$STEPS" "$SIZE" iso; done
a0=$(submit iso_a0 0 "$DIR/iso_a0.json")
wait_running 0 "$a0"
p0a=$(submit iso_p0a 0 "$DIR/iso_202.json")
p0b=$(submit iso_p0b 0 "$DIR/iso_203.json")
a1=$(submit iso_a1 1 "$DIR/iso_a1.json") # queued on GPU 1 while GPU 0 is busy
p1a=$(submit iso_p1a 1 "$DIR/iso_204.json")
wait_running 1 "$a1"
[ "$(req qclear POST "$URL/queue" -H 'Content-Type: application/json' -H 'X-TARGET-GPU: 0' -d '{"clear": true}')" = 200 ] ||
    fail "POST /queue clear on device 0"
req qa1 GET "$URL/queue/all" >/dev/null
[ "$(js "$DIR/qa1.body" 'j["queues"][0]["pending_count"]')" = 0 ] || fail "device 0 still has pending prompts after its clear"
[ "$(js "$DIR/qa1.body" "[r[1] for r in j['queues'][1]['queue_pending']]")" = "[\"$p1a\"]" ] ||
    fail "device 1's queue changed by device 0's clear: $(js "$DIR/qa1.body" 'j["queues"][1]')"
for id in "$a0" "$a1" "$p1a"; do
    wait_history "$id" && { [ "$(status_of "$id")" = success ] || fail "isolation prompt $id: $(status_of "$id")"; }
done
if [ -s "$DIR/hist_$a0.json" ] && [ -s "$DIR/hist_$a1.json" ]; then
    s1=$(stamp "$a1" execution_start)
    e0=$(stamp "$a0" execution_success)
    [ -n "$s1" ] && [ -n "$e0" ] && [ "$s1" -lt "$e0" ] ||
        fail "GPU 1's prompt started at $s1, not before GPU 0's finished at $e0"
fi
for id in "$p0a" "$p0b"; do
    [ "$(curl -s "$URL/history/$id")" = "{}" ] || fail "cleared prompt $id ran"
done
passed "queue isolation (GPU 1 starts while GPU 0 is busy; GPU 0's clear leaves GPU 1's queue)"

# ===== GPU memory nodes across devices =====
node_wf "$DIR/clean.json" GPUMemoryCleanup '{"clear_all_gpus": true, "aggressive": true, "unit": "MB"}'
if id=$(submit clean 0 "$DIR/clean.json") && wait_history "$id" 60; then
    r=$(report "$id" 1)
    echo "$r" | sed 's/^/  | /'
    for ((d = 1; d < NDEV; d++)); do
        echo "$r" | grep -qE "^(GPU [0-9]+|CPU device $d): (freed|queued)" || fail "cleanup report names no other device"
    done
    echo "$r" | grep -q '^Total freed: ' || fail "cleanup report without a total"
fi
passed "GPUMemoryCleanup clear_all_gpus reports every device"
if [ "$CPU" -eq 0 ]; then
    node_wf "$DIR/res.json" GPUMemoryReserve '{"reserved": 1.5, "mode": "manual", "gpu_index": 1, "min_safe_reserve": 1.0, "clear_memory": false, "show_gpu_info": false}'
    if id=$(submit res 0 "$DIR/res.json") && wait_history "$id" 60; then
        r=$(report "$id" 1)
        echo "$r" | sed 's/^/  | /'
        echo "$r" | grep -q '✓ Applied to GPU 1' || fail "GPUMemoryReserve on GPU 0 did not apply to GPU 1"
    fi
    passed "GPUMemoryReserve on GPU 0 sets GPU 1's reserve"
else
    skipped "GPUMemoryReserve across GPUs (no GPUs)"
fi

# ===== Out of memory on GPU 0 while GPU 1 serves =====
if [ "$CPU" -gt 0 ]; then
    skipped "out of memory on GPU 0 (no GPUs: host memory is not the point)"
else
    oom_wf "$DIR/oom.json"
    oom=$(submit oom 0 "$DIR/oom.json")
    wf "$DIR/ok.json" 300 "$STEPS" "$SIZE" ok
    oks=()
    for k in 1 2 3; do oks+=("$(submit "ok$k" 1 "$DIR/ok.json")"); done
    if [ -n "$oom" ] && wait_history "$oom"; then
        [ "$(status_of "$oom")" = error ] || fail "the OOM prompt ended with $(status_of "$oom")"
        msg=$(js "$DIR/hist_$oom.json" "next((d['exception_message'] for t, d in j['$oom']['status']['messages'] if t == 'execution_error'), '')")
        echo "  execution_error: ${msg:0:300}"
        echo "$msg" | grep -qi 'out of memory' || fail "the OOM prompt's execution_error does not name out of memory: $msg"
    fi
    for id in "${oks[@]}"; do
        wait_history "$id" && { [ "$(status_of "$id")" = success ] || fail "GPU 1 prompt $id: $(status_of "$id")"; }
    done
    [ "$(req stats GET "$URL/system_stats")" = 200 ] && kill -0 "$PID" 2>/dev/null || fail "the server is down after the OOM"
    # and GPU 0 serves again
    if id=$(submit after 0 "$DIR/ok.json") && wait_history "$id"; then
        [ "$(status_of "$id")" = success ] || fail "GPU 0 after its OOM: $(status_of "$id")"
    fi
    rss_point "after the OOM prompt"
    passed "out of memory on GPU 0: execution_error, GPU 1 unaffected, server up"
fi

# ===== Summary =====
lib_stop_int "$PID" 30
PID=
lib_check_sanitizer "$LOG"
echo
echo "===== multi_gpu.sh summary ($NDEV devices, $((SECONDS - T0)) s) ====="
printf '%s\n' "${SUMMARY[@]}"
[ -s "$RSS_LOG" ] && { echo "RSS:"; sed 's/^/  /' "$RSS_LOG"; }
if [ "$fails" -gt 0 ]; then
    echo "FAILED: $fails check(s)"
    [ -z "${KILN_TEST_KEEP:-}" ] && echo "(server log tail:)" && tail -n 30 "$LOG"
    exit 1
fi
echo "PASSED"
exit 0
