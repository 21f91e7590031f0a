#!/usr/bin/env bash
# tests/cli/client_sdk.sh -- an existing ComfyUI client, unchanged, against kiln: the CLI of the
# npm package @saintno/comfyui-sdk (`cfli`, pinned in tests/e2e/package.json) runs a txt2img
# (the demo workflow at 64x64, 2 steps, tiny random checkpoint) on `kiln serve` over HTTP and the
# WebSocket, and downloads the image through /view. It must report "completed", and the PNG it
# downloaded must be the file kiln saved, byte for byte. Then with --api-token: cfli --token
# passes, cfli without it fails. Bounded: about 20 s under ASan.
# Usage: client_sdk.sh KILN_BINARY SOURCE_DIR (as CTest calls it). Needs node (scripts/setup
# --test installs it and runs `npm ci` in tests/e2e).
set -u
KILN=$(realpath "${1:?kiln binary}")
SRC=$(realpath "${2:?source dir}")
. "$(dirname "$0")/lib.sh"
lib_tmpdir kiln_cli_client_sdk
PID=
cd "$DIR" || exit 1
lib_env KILN_API_TOKEN
lib_need node python3
CFLI=$SRC/tests/e2e/node_modules/.bin/cfli
[ -x "$CFLI" ] || { echo "FAIL: cfli is not installed in tests/e2e (scripts/setup --test runs npm ci there)"; exit 1; }

lib_tiny_ckpt "$DIR/models/checkpoints/tiny.safetensors"
python3 - "$SRC/examples/demo.json" "$DIR/wf.json" <<'PY'
import json, sys
wf = json.load(open(sys.argv[1]))
for node in wf.values():
    i = node["inputs"]
    if node["class_type"] == "CheckpointLoaderSimple": i["ckpt_name"] = "tiny.safetensors"
    if node["class_type"] == "EmptyLatentImage": i.update(width=64, height=64, batch_size=1)
    if node["class_type"] == "KSampler": i["steps"] = 2
json.dump(wf, open(sys.argv[2], "w"))
PY

# run_cfli NAME SECONDS ARGS...: cfli on wf.json (killed after SECONDS), JSON result in NAME.json,
# images into NAME/; sets rc
run_cfli() {
    local name=$1 secs=$2; shift 2
    timeout -k 5 "$secs" "$CFLI" -f "$DIR/wf.json" -H "$URL" --json -d -o "$DIR/$name" "$@" >"$DIR/$name.json" 2>"$DIR/$name.err"
    rc=$?
}

# ===== Plain =====
LOG=$DIR/server.log
lib_serve "$LOG" 1 --cpu-workers 1 --models-dir "$DIR/models" --output-directory "$DIR/output" \
    --input-directory "$DIR/input" --temp-dir "$DIR/temp" --db ''
PID=$SPID
run_cfli plain 60
if [ "$rc" != 0 ]; then
    fail "cfli exited $rc: $(tail -n 5 "$DIR/plain.err") $(head -c 400 "$DIR/plain.json")"
else
    status=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"])' "$DIR/plain.json" 2>&1)
    [ "$status" = completed ] || fail "cfli status: $status"
    n=0
    for f in "$DIR"/plain/*.png; do
        [ -e "$f" ] || continue
        n=$((n + 1))
        cmp -s "$f" "$DIR/output/$(basename "$f")" || fail "cfli's $(basename "$f") differs from kiln's output file"
    done
    [ "$n" = 1 ] || fail "cfli downloaded $n images, expected 1"
fi
passed "cfli (@saintno/comfyui-sdk) ran a txt2img and downloaded the image kiln saved"
lib_stop_int "$PID" 20
PID=
[ "$STOP_RC" = 0 ] || fail "kiln serve exited $STOP_RC after SIGINT"
lib_check_sanitizer "$LOG"

# ===== With --api-token =====
TOKEN=client-sdk-test-token
LOG=$DIR/server_token.log
lib_serve "$LOG" 1 --cpu-workers 1 --models-dir "$DIR/models" --output-directory "$DIR/output" \
    --input-directory "$DIR/input" --temp-dir "$DIR/temp" --db '' --api-token "$TOKEN"
PID=$SPID
run_cfli token 60 --token "$TOKEN"
[ "$rc" = 0 ] || fail "cfli --token exited $rc: $(tail -n 5 "$DIR/token.err")"
before=$(ls "$DIR/output" | wc -l)
run_cfli notoken 10 # the client keeps retrying a refused connection: it is stopped after 10 s
[ "$rc" != 0 ] || fail "cfli without the token succeeded against --api-token"
[ "$(ls "$DIR/output" | wc -l)" = "$before" ] || fail "a prompt without the token ran"
passed "--api-token: cfli --token passes, cfli without it is refused"
lib_stop_int "$PID" 20
PID=
[ "$STOP_RC" = 0 ] || fail "kiln serve exited $STOP_RC after SIGINT"
lib_check_sanitizer "$LOG"

if [ "$fails" -ne 0 ]; then
    echo "client_sdk.sh: $fails failure(s); server log tail:"
    tail -n 20 "$LOG"
    exit 1
fi
echo "client_sdk.sh: all passed in $((SECONDS - T0)) s"
