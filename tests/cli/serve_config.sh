#!/usr/bin/env bash
# tests/cli/serve_config.sh -- `kiln serve`'s configuration and start-up, without prompts:
# precedence flags > environment > .env > defaults (--print-config names each value's origin),
# .env syntax (export, quotes, comments), ComfyUI's flag forms (bare --listen, --temp-directory
# D -> D/temp, --enable-cors-header), the launcher variables (CUDA_VISIBLE_DEVICES,
# COMFY_MULTI_GPU_SCHED, COMFY_NUM_GPUS), every invalid value -> exit 2 with a message naming
# it, GPU modes on a CPU-only build (refused; in a CUDA build: a GPU that does not exist is
# refused, and checks of CPU mode's defaults ask for --cpu), the README's variable table against --help, the panel
# (ASCII off a terminal, box drawing and colour when forced, NO_COLOR), a busy port (exit 1),
# and SIGTERM -> clean exit 0.
# Usage: serve_config.sh KILN_BINARY SOURCE_DIR (as CTest calls it).
set -u
KILN=$(realpath "${1:?kiln binary}")
SRC=$(realpath "${2:?source dir}")
DIR=$(mktemp -d /tmp/kiln_cli_serve_config_XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$DIR"
}
trap cleanup EXIT
cd "$DIR" || exit 1
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
# the caller's own settings must not leak into the checks
unset KILN_LISTEN KILN_PORT KILN_GPU_PORTS KILN_CPU_WORKERS KILN_THREADS KILN_METRICS_EVERY KILN_BASE_DIR \
      KILN_MODELS_DIR KILN_INPUT_DIR KILN_OUTPUT_DIR KILN_TEMP_DIR KILN_TOKENIZER KILN_CORS_ORIGIN \
      KILN_MAX_UPLOAD_SIZE KILN_MAX_NODES KILN_MAX_PIXELS KILN_MAX_BATCH KILN_MAX_WS KILN_API_TOKEN KILN_DISABLE_METADATA KILN_LOG KILN_CPU KILN_GPUS KILN_ENV_FILE \
      CUDA_VISIBLE_DEVICES COMFY_MULTI_GPU_SCHED COMFY_NUM_GPUS NO_COLOR CLICOLOR_FORCE
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
mark=0
# passed NAME: "ok: NAME" when the checks since the last call all passed
passed() {
    if [ "$fails" = "$mark" ]; then echo "ok: $*"; fi
    mark=$fails
}

# CUDA=1 when this kiln has the CUDA backend (`kiln gpus` says so), with NGPU the devices it sees
CUDA=0 NGPU=0
if "$KILN" gpus >"$DIR/gpus.txt" 2>&1 && grep -q '^build: CUDA backend' "$DIR/gpus.txt"; then
    CUDA=1
    NGPU=$(sed -n 's/^build: CUDA backend; the CUDA runtime sees \([0-9]*\) device.*/\1/p' "$DIR/gpus.txt")
fi
grep -q '^devices: [0-9]' "$DIR/gpus.txt" || fail "kiln gpus: no device count in: $(tr '\n' '|' <"$DIR/gpus.txt")"
# CPU mode's checks below: a CUDA build picks GPU mode by default, so they ask for CPU mode
CPUFLAG=()
[ "$CUDA" = 1 ] && CPUFLAG=(--cpu)

# cfg NAME ARGS...: `kiln serve --print-config ARGS` must exit 0; output in NAME.cfg
cfg() {
    local name=$1; shift
    "$KILN" serve --print-config "$@" >"$DIR/$name.cfg" 2>"$DIR/$name.err"
    local rc=$?
    [ "$rc" = 0 ] || { fail "$name: kiln serve --print-config $* -> exit $rc: $(cat "$DIR/$name.err")"; return 1; }
}

# has NAME 'LINE': NAME.cfg contains exactly this line (a tab before the origin)
has() {
    grep -qxF -- "$2" "$DIR/$1.cfg" || fail "$1: no line '$2' in: $(tr '\n' '|' <"$DIR/$1.cfg")"
}

# refused NAME 'MESSAGE PART' ARGS...: exit 2 and the message on stderr
refused() {
    local name=$1 want=$2; shift 2
    "$KILN" serve --print-config "$@" >/dev/null 2>"$DIR/$name.err"
    local rc=$?
    [ "$rc" = 2 ] || fail "$name: kiln serve $* -> exit $rc, expected 2"
    grep -qF -- "$want" "$DIR/$name.err" || fail "$name: stderr '$(cat "$DIR/$name.err")' lacks '$want'"
}

T=$'\t'

# ===== Defaults =====
cfg defaults
has defaults "listen=127.0.0.1${T}(default)"
has defaults "port=8188${T}(default)"
has defaults "gpu_ports=off${T}(default)"
if [ "$CUDA" = 0 ]; then
    has defaults "cpu_workers=1${T}(default)"
else
    has defaults "cpu_workers=0${T}(default)"
fi
has defaults "models_dir=models${T}(default)"
has defaults "output_dir=output${T}(default)"
has defaults "input_dir=input${T}(default)"
has defaults "temp_dir=temp${T}(default)"
has defaults "cors_origin=off${T}(default)"
has defaults "max_upload_size=104857600"
has defaults "metrics_every=10${T}(default)"
has defaults "max_nodes=1000${T}(default)"
has defaults "max_pixels=268435456${T}(default)"
has defaults "max_batch=64${T}(default)"
has defaults "max_ws=256${T}(default)"
has defaults "api_token=off${T}(default)"
grep -q '^note=.*without --api-token' "$DIR/defaults.cfg" && fail "defaults: a loopback listener warns"
if [ "$CUDA" = 0 ]; then
    has defaults "mode=cpu${T}(this build has no GPU backend)"
    has defaults "devices=1"
else
    has defaults "mode=gpu${T}(every visible GPU)"
    has defaults "devices=0"
fi
has defaults "env_file=.env${T}(not found)"
passed "defaults"

# ===== Precedence: flag > environment > .env > default =====
cat >"$DIR/.env" <<'EOF'
# kiln settings
export KILN_PORT=9001   # a comment after the value
KILN_LISTEN = "127.0.0.1,::1"
KILN_OUTPUT_DIR='/tmp/out dir #not a comment'
KILN_CPU_WORKERS=2
KILN_MAX_UPLOAD_SIZE=
SOME_OTHER_TOOL="x\"y"
EOF
cfg dotenv
has dotenv "port=9001${T}(.env .env:2)"
has dotenv "listen=127.0.0.1,::1${T}(.env .env:3)"
has dotenv "output_dir=/tmp/out dir #not a comment${T}(.env .env:4)"
has dotenv "cpu_workers=2${T}(.env .env:5)"
has dotenv "max_upload_size_mb=100${T}(default)" # an empty value counts as unset
has dotenv "env_file=.env${T}(read)"
KILN_PORT=9002 cfg env
has env "port=9002${T}(environment KILN_PORT)"
has env "cpu_workers=2${T}(.env .env:5)"
KILN_PORT=9002 cfg flag --port 9003
has flag "port=9003${T}(flag --port)"
cfg flag_eq --port=9004 --cpu-workers 3
has flag_eq "port=9004${T}(flag --port)"
has flag_eq "cpu_workers=3${T}(flag --cpu-workers)"
# the last of repeated flags wins, as with argparse
cfg repeat --port 9005 --port 9006
has repeat "port=9006${T}(flag --port)"
# --env-file and KILN_ENV_FILE pick another file; an explicit one must exist
printf 'KILN_PORT=9100\n' >"$DIR/other.env"
cfg envfile --env-file other.env
has envfile "port=9100${T}(.env other.env:1)"
KILN_ENV_FILE=other.env cfg envfile2
has envfile2 "port=9100${T}(.env other.env:1)"
refused envfile_missing "cannot read the settings file nope.env" --env-file nope.env
rm -f "$DIR/.env"
passed "precedence"

# ===== Limits and the API token =====
KILN_MAX_NODES=50 KILN_MAX_WS=9 KILN_API_TOKEN=env-token-123 cfg limits --max-pixels 1000000 --max-batch 8
has limits "max_nodes=50${T}(environment KILN_MAX_NODES)"
has limits "max_pixels=1000000${T}(flag --max-pixels)"
has limits "max_batch=8${T}(flag --max-batch)"
has limits "max_ws=9${T}(environment KILN_MAX_WS)"
has limits "api_token=(set)${T}(environment KILN_API_TOKEN)"
grep -q 'env-token-123' "$DIR/limits.cfg" && fail "--print-config shows the token"
cfg exposed --listen 0.0.0.0
grep -qxF "note=listening on 0.0.0.0 without --api-token: anyone who can reach it can queue prompts and read outputs" \
    "$DIR/exposed.cfg" || fail "exposed: no note in $(tr '\n' '|' <"$DIR/exposed.cfg")"
cfg exposed_token --listen 127.0.0.1,0.0.0.0 --api-token flag-token-123
grep -q 'without --api-token' "$DIR/exposed_token.cfg" && fail "exposed_token: a token still warns"
has exposed_token "api_token=(set)${T}(flag --api-token)"
passed "limits and the API token"

# ===== ComfyUI's flag forms =====
cfg listen_bare --listen
has listen_bare "listen=0.0.0.0${T}(flag --listen)"
cfg listen_bare2 --listen --port 9000
has listen_bare2 "listen=0.0.0.0${T}(flag --listen)"
has listen_bare2 "port=9000${T}(flag --port)"
cfg listen_list --listen '127.0.0.1,[::1]'
has listen_list "listen=127.0.0.1,::1${T}(flag --listen)"
cfg tempdir --temp-directory /tmp/kt
has tempdir "temp_dir=/tmp/kt/temp${T}(flag --temp-directory)"
cfg tempdir2 --temp-dir /tmp/kt
has tempdir2 "temp_dir=/tmp/kt${T}(flag --temp-dir)"
mkdir -p "$DIR/base"
cfg base --base-directory "$DIR/base" --output-directory /tmp/o
has base "models_dir=$DIR/base/models${T}(default)"
has base "input_dir=$DIR/base/input${T}(default)"
has base "output_dir=/tmp/o${T}(flag --output-directory)"
cfg cors --enable-cors-header
has cors "cors_origin=*${T}(flag --enable-cors-header)"
cfg cors2 --enable-cors-header http://example.com:8080
has cors2 "cors_origin=http://example.com:8080${T}(flag --enable-cors-header)"
cfg upload --max-upload-size 0.5
has upload "max_upload_size=524288"
cfg meta --disable-metadata --verbose
has meta "disable_metadata=1${T}(flag --disable-metadata)"
has meta "log=debug${T}(flag --verbose)"
cfg verbose --verbose WARNING
has verbose "log=warning${T}(flag --verbose)"
cfg ignored --highvram --preview-method auto
has ignored "note=--highvram ignored: kiln manages device memory itself"
has ignored "note=--preview-method ignored: kiln sends no previews yet"
passed "ComfyUI flag forms"

# ===== Modes and the launcher variables =====
cfg cpu --cpu
has cpu "mode=cpu${T}(--cpu)"
CUDA_VISIBLE_DEVICES='' cfg cvd_empty
has cvd_empty "mode=cpu${T}(CUDA_VISIBLE_DEVICES is empty)"
CUDA_VISIBLE_DEVICES=0,1 cfg cvd
if [ "$CUDA" = 0 ]; then
    has cvd "note=CUDA_VISIBLE_DEVICES=0,1 ignored: this build has no GPU backend"
else
    has cvd "mode=gpu${T}(CUDA_VISIBLE_DEVICES)"
fi
COMFY_NUM_GPUS=3 cfg numgpus "${CPUFLAG[@]}"
has numgpus "devices=3"
has numgpus "cpu_workers=3${T}(environment COMFY_NUM_GPUS)"
COMFY_NUM_GPUS=3 COMFY_MULTI_GPU_SCHED=0 cfg onesched "${CPUFLAG[@]}"
has onesched "devices=1"
has onesched "cpu_workers=1${T}(environment COMFY_MULTI_GPU_SCHED=0)"
COMFY_NUM_GPUS=3 COMFY_MULTI_GPU_SCHED=0 cfg explicit --cpu-workers 2 "${CPUFLAG[@]}"
has explicit "devices=2"
has explicit "note=COMFY_NUM_GPUS=3 ignored: --cpu-workers 2 is kiln's own setting"
printf 'CUDA_VISIBLE_DEVICES=\nCOMFY_NUM_GPUS=2\n' >"$DIR/cpu.env"
cfg cpuenv --env-file cpu.env
has cpuenv "mode=cpu${T}(CUDA_VISIBLE_DEVICES is empty)"
has cpuenv "devices=2"
# a flag beats a variable that asks for the other mode
KILN_CPU=1 cfg gpuflag --gpus 1,0
has gpuflag "mode=gpu${T}(--gpus 1,0)"
has gpuflag "gpus=1,0${T}(flag --gpus)"
passed "modes"

# ===== Invalid values: exit 2, the message names the value and where it came from =====
refused port "--port 99999: expected a port number" --port 99999
refused port_text "--port abc: expected a port number" --port abc
KILN_PORT=x refused port_env "KILN_PORT=x (environment): expected a port number"
printf '\n\nKILN_CPU_WORKERS=99\n' >"$DIR/bad.env"
refused workers_file "KILN_CPU_WORKERS=99 (bad.env:3): expected a CPU device count (1-16)" --env-file bad.env
printf 'KILN_PORT="9000\n' >"$DIR/quote.env"
refused quote "quote.env:1: unterminated \" quote" --env-file quote.env
printf 'KILN PORT=1\n' >"$DIR/syntax.env"
refused syntax "syntax.env:1: expected '=' after KILN" --env-file syntax.env
refused workers0 "--cpu-workers 0: expected a CPU device count (1-16)" --cpu-workers 0
refused workers17 "--cpu-workers 17: expected a CPU device count (1-16)" --cpu-workers 17
refused threads "--threads -1: expected a thread count" --threads -1
refused max_nodes "--max-nodes 0: expected a node count" --max-nodes 0
refused max_pixels "--max-pixels 1e9: expected a pixel count" --max-pixels 1e9
refused max_batch "--max-batch 4097: expected a batch size" --max-batch 4097
KILN_MAX_WS=-1 refused max_ws "KILN_MAX_WS=-1 (environment): expected a connection count"
refused token_short "--api-token short: a token has 8 to 511 characters" --api-token short
refused token_space "a token has no spaces" --api-token "two words here"
refused metrics "--metrics-every x: expected a prompt count" --metrics-every x
refused listen "--listen 1.2.3: '1.2.3' is not an IP address" --listen 1.2.3
refused listen_dup "--listen 127.0.0.1,127.0.0.1: 127.0.0.1 is listed twice" --listen 127.0.0.1,127.0.0.1
refused gpus "--gpus a: 'a' is not a GPU index" --gpus a
refused gpus_dup "--gpus 0,0: GPU 0 is listed twice" --gpus 0,0
refused single "--single 1,2: expected one GPU index" --single 1,2
refused cpu_gpus "--cpu and --gpus 1 contradict each other" --cpu --gpus 1
refused upload "--max-upload-size 0: expected a size in MiB" --max-upload-size 0
refused upload_text "--max-upload-size lots: expected a size in MiB" --max-upload-size lots
refused level "--verbose loud: expected debug, info, warning or error" --verbose loud
KILN_LOG=chatty refused level_env "KILN_LOG=chatty (environment): expected debug, info, warning or error"
KILN_DISABLE_METADATA=maybe refused bool "KILN_DISABLE_METADATA=maybe (environment): expected 1/0"
COMFY_NUM_GPUS=0 refused numgpus "COMFY_NUM_GPUS=0 (environment): expected a device count"
COMFY_MULTI_GPU_SCHED=2 refused multisched "COMFY_MULTI_GPU_SCHED=2 (environment): expected 1"
refused gpuports_main "--gpu-ports 8187: device 1 would listen on 8188, the main port" --gpu-ports 8187 --cpu-workers 2
refused gpuports_top "--gpu-ports 65535: device 1 would need port 65536" --gpu-ports 65535 --cpu-workers 2
refused tokenizer "--tokenizer /nonexistent: no such folder" --tokenizer /nonexistent
refused base "--base-directory /nonexistent: no such folder" --base-directory /nonexistent
refused cors "an origin has no spaces or control characters" --enable-cors-header "$(printf 'a\r\nX-Evil: 1')"
refused unknown "unknown option --bogus" --bogus
refused tls "--tls-keyfile is not supported" --tls-keyfile key.pem
refused novalue "--port needs a value" --port
refused switch_value "--cpu takes no value" --cpu=1
refused positional "unexpected argument 'extra'" extra
passed "invalid values"

# ===== GPU modes need a GPU build (and, in one, GPUs that exist) =====
# serve_refused NAME 'MESSAGE PART' ARGS...: `kiln serve ARGS` (no --print-config) exits 2 saying so
serve_refused() {
    local name=$1 want=$2; shift 2
    "$KILN" serve "$@" >/dev/null 2>"$DIR/$name.err"
    local rc=$?
    [ "$rc" = 2 ] || fail "$name: kiln serve $* -> exit $rc, expected 2"
    grep -qF -- "$want" "$DIR/$name.err" || fail "$name: stderr '$(cat "$DIR/$name.err")' lacks '$want'"
}
if [ "$CUDA" = 0 ]; then
    serve_refused gpus01 "no GPU backend" --gpus 0,1
    serve_refused single0 "no GPU backend" --single 0
    serve_refused cudadev1 "no GPU backend" --cuda-device 1
elif [ "$NGPU" = 0 ]; then
    serve_refused gpus01 "--gpus 0,1 asks for GPUs, but no CUDA device is visible (0 CUDA devices visible)" --gpus 0,1
    serve_refused single0 "no CUDA device is visible" --single 0
else
    serve_refused gpus63 "GPU 63 does not exist ($NGPU CUDA device" --gpus 0,63
    serve_refused single63 "GPU 63 does not exist" --single 63
fi
passed "GPU modes refused on a CPU build, missing GPUs refused on a CUDA build"

# ===== Documentation: every variable of --help is in the README's table =====
"$KILN" serve --help >"$DIR/help.txt" 2>&1 || fail "kiln serve --help -> exit $?"
for v in $(grep -o 'KILN_[A-Z_]*' "$DIR/help.txt" | sort -u) CUDA_VISIBLE_DEVICES COMFY_MULTI_GPU_SCHED COMFY_NUM_GPUS; do
    grep -q "\`$v" "$SRC/README.md" || fail "README.md does not document $v"
done
for f in $(grep -oE '^  --[a-z-]+' "$DIR/help.txt" | tr -d ' '); do
    grep -q -- "\`$f" "$SRC/README.md" || fail "README.md does not document $f"
done
passed "README lists every flag and variable"

# ===== Start-up, panel, busy port, SIGTERM =====
# serve_start NAME ARGS...: starts kiln serve --port 0 (any free port) and waits for "ready";
# sets SPID and SPORT.
serve_start() {
    local name=$1; shift
    "$KILN" serve --port 0 --models-dir "$DIR/models" --output-directory "$DIR/out" --input-directory "$DIR/in" \
        --temp-dir "$DIR/tmp" "$@" >"$DIR/$name.log" 2>&1 &
    SPID=$!
    PIDS+=("$SPID")
    SPORT=
    for _ in $(seq 1 300); do
        SPORT=$(sed -nE 's#.*ready: http://127\.0\.0\.1:([0-9]+).*#\1#p' "$DIR/$name.log" | head -n 1)
        [ -n "$SPORT" ] && return 0
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.1
    done
    fail "$name: kiln serve $* did not get ready: $(cat "$DIR/$name.log")"
    return 1
}

# serve_stop NAME: SIGTERM, exit 0 within 20 s, "stopped" logged, no sanitizer report
serve_stop() {
    local name=$1 rc
    kill -TERM "$SPID"
    for _ in $(seq 1 200); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SPID" 2>/dev/null; then fail "$name: still running 20 s after SIGTERM"; kill -KILL "$SPID"; fi
    wait "$SPID"
    rc=$?
    [ "$rc" = 0 ] || fail "$name: exit $rc after SIGTERM, expected 0"
    grep -q 'SIGTERM: shutting down' "$DIR/$name.log" || fail "$name: no shutdown line"
    grep -q 'info  stopped$' "$DIR/$name.log" || fail "$name: no 'stopped' line"
    if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$DIR/$name.log"; then
        fail "$name: sanitizer report:"
        cat "$DIR/$name.log"
    fi
}

if serve_start plain --cpu-workers 2 --gpu-ports 0; then
    log=$DIR/plain.log
    grep -qE '^\+-+ kiln [0-9][^ ]* -+\+$' "$log" || fail "plain: no ASCII panel title: $(head -n 3 "$log")"
    grep -q $'\033' "$log" && fail "plain: escape sequences off a terminal"
    grep -q '| CPU mode: 2 devices, one queue and one worker each' "$log" || fail "plain: no mode line"
    grep -qE '^\|  +0  cpu:0 .*RAM [0-9.]+ [GM]iB' "$log" || fail "plain: no device 0 row"
    grep -qE '^\|  +1  cpu:1 ' "$log" || fail "plain: no device 1 row"
    grep -q "| Listening   http://127.0.0.1:$SPORT " "$log" || fail "plain: no listen line for port $SPORT"
    grep -qE "^\|   output +$DIR/out +\|" "$log" || fail "plain: no output folder line"
    for d in out in tmp; do [ -d "$DIR/$d" ] || fail "plain: folder $d not created"; done
    for ((i = 0; i < 50; i++)); do [ "$(grep -c 'worker started' "$log")" = 2 ] && break; sleep 0.1; done
    n=$(grep -c 'worker started' "$log") # the workers' threads may log after the ready line
    [ "$n" = 2 ] || fail "plain: $n 'worker started' lines, expected 2"
    body=$(curl -s "http://127.0.0.1:$SPORT/prompt")
    [ "$body" = '{"exec_info": {"queue_remaining": 0}}' ] || fail "plain: GET /prompt -> '$body'"

    # the same port again: exit 1, the message names the address
    "$KILN" serve --port "$SPORT" --output-directory "$DIR/out" >"$DIR/busy.log" 2>&1
    rc=$?
    [ "$rc" = 1 ] || fail "busy port: exit $rc, expected 1"
    grep -q "cannot start the HTTP server: .*$SPORT" "$DIR/busy.log" || fail "busy port: '$(cat "$DIR/busy.log")'"
    serve_stop plain
    passed "ASCII panel, busy port, SIGTERM"
fi

if CLICOLOR_FORCE=1 serve_start color --enable-cors-header; then
    log=$DIR/color.log
    grep -q $'\033\\[' "$log" || fail "color: CLICOLOR_FORCE=1 gave no colour"
    grep -q '╭' "$log" || fail "color: no box drawing"
    grep -q '╯' "$log" || fail "color: no box drawing"
    serve_stop color
fi
if CLICOLOR_FORCE=1 NO_COLOR=1 serve_start nocolor; then
    log=$DIR/nocolor.log
    grep -q $'\033' "$log" && fail "nocolor: NO_COLOR still gave escape sequences"
    grep -q '│ CPU mode: 1 device, one queue and one worker each' "$log" || fail "nocolor: no box-drawn mode line"
    serve_stop nocolor
    passed "colour panel, NO_COLOR"
fi

if [ "$fails" -ne 0 ]; then
    echo "serve_config.sh: $fails failure(s)"
    exit 1
fi
echo "serve_config.sh: all passed"
