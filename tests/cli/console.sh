#!/usr/bin/env bash
# tests/cli/console.sh -- kiln's web console end to end in headless Chromium: kiln serve on a
# random tiny checkpoint with two CPU devices, then tests/e2e/console.js (playwright-core
# driving Debian's /usr/bin/chromium) loads the console, queues a txt2img through its form,
# watches the progress bar move and the image reach the gallery, cancels a pending prompt and
# stops a running one, and checks keyboard reachability. Screenshots (1280x800 and 390x844)
# stay in BUILD/e2e/ as artefacts (their paths are printed). Bounded: about 30 s under ASan,
# 150 s at most for the browser part.
# Usage: console.sh KILN_BINARY SOURCE_DIR (as CTest calls it). Needs node, npm, chromium
# (scripts/setup --test installs them, and runs `npm ci` in tests/e2e: `make test` runs it).
set -u
KILN=$(realpath "${1:?kiln binary}")
SRC=$(realpath "${2:?source dir}")
. "$(dirname "$0")/lib.sh"
lib_tmpdir kiln_cli_console
PID=
cd "$DIR" || exit 1
lib_env
lib_need node npm curl
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] || { echo "FAIL: console.sh needs Chromium at $CHROMIUM (scripts/setup --test installs it)"; exit 1; }
export CHROMIUM

E2E=$SRC/tests/e2e
[ -f "$E2E/node_modules/playwright-core/package.json" ] ||
    { echo "FAIL: playwright-core is not installed in $E2E (scripts/setup --test runs npm ci there)"; exit 1; }
ART=$(dirname "$KILN")/e2e
mkdir -p "$ART" && rm -f "$ART"/console-*.png

lib_tiny_ckpt "$DIR/models/checkpoints/tiny.safetensors"
LOG=$DIR/server.log
lib_serve "$LOG" 1 --cpu-workers 2 --models-dir "$DIR/models" --output-directory "$DIR/output" \
    --input-directory "$DIR/input" --temp-dir "$DIR/temp"
PID=$SPID

# the prompt whose progress bar is watched: 40 steps of the tiny model take long enough to be seen
# step by step in a sanitizer build; a Release build runs them ten times as fast, so it gets 400
STEPS=400
{ ldd "$KILN"; nm -D "$KILN"; } 2>/dev/null | grep -q asan && STEPS=40
KILN_E2E_STEPS=$STEPS timeout -k 5 150 node "$E2E/console.js" "$URL/" "$ART"
rc=$?
[ "$rc" = 0 ] || fail "the browser test failed (exit $rc); server log: $LOG"
passed "web console in Chromium"

lib_stop_int "$PID" 20
PID=
[ "$STOP_RC" = 0 ] || fail "kiln serve exited $STOP_RC after SIGINT"
lib_check_sanitizer "$LOG"
passed "graceful stop, no sanitizer report"

if [ "$fails" -ne 0 ]; then
    echo "console.sh: $fails failure(s); server log tail:"
    tail -n 30 "$LOG"
    exit 1
fi
echo "console.sh: all passed in $((SECONDS - T0)) s (screenshots in $ART)"
