#!/usr/bin/env bash
# tests/cli/deploy.sh -- the deployment pieces of deploy/ (issue 8 item 3):
#  1. install: `cmake --install` of the build that made KILN (what `make install` runs after its
#     Release build), with --prefix P and DESTDIR: every file where deploy/install.cmake says,
#     nothing outside DESTDIR/P, the binary runs, the unit's ExecStart names P/bin/kiln;
#  2. `systemd-analyze verify` on the installed unit (a copy whose ExecStart names the staged
#     binary) must be silent; a known-good unit is verified first so that a machine where verify
#     cannot run is told apart from an error in the unit (then reported and skipped), and a unit
#     with a bad value must be reported (the check can fail); `systemd-sysusers --dry-run` on the
#     sysusers file; every KILN_* line of kiln.env, uncommented, is accepted by kiln;
#  3. `nginx -t` on each example and on both together (wrapped in a minimal nginx.conf), then the
#     examples for real: nginx (one process, no daemon) on free loopback ports in front of
#     `kiln serve --cpu-workers 2`: the GPU-1 port runs a prompt on device 1 over the WebSocket
#     even when the client asks for device 0 (/metrics proves it), the GPU-3 port gets kiln's
#     400 invalid_target_gpu, the reverse proxy passes the WebSocket and a 2 MiB upload;
#  4. --log-file with --log-max-size 1 --log-keep 2 end to end: 2000 debug lines of ~2 KB
#     (one per request), then SIGINT: kiln.log, .1 and .2 and no .3, each at most 1 MiB, the
#     rotated ones full, and together exactly the last lines that went to stderr, in order.
# Usage: deploy.sh KILN_BINARY SOURCE_DIR (as CTest calls it). Needs cmake, curl, python3,
# nginx and systemd-analyze (scripts/setup --test installs them). Runs in about 15 s.
set -u
KILN=$(realpath "${1:?kiln binary}")
SRC=$(realpath "${2:?source dir}")
BUILD=$(dirname "$KILN")
WSC=$SRC/tests/integration/ws_client.py
. "$(dirname "$0")/lib.sh"
lib_tmpdir kiln_cli_deploy
PID=  # kiln serve
PID2= # nginx
cd "$DIR" || exit 1
lib_env KILN_LOG KILN_LOG_FILE KILN_LOG_MAX_SIZE KILN_LOG_KEEP KILN_DB KILN_PORT KILN_LISTEN KILN_CPU_WORKERS
lib_need cmake curl python3 nginx systemd-analyze

# ===== 1. Install into DESTDIR with a prefix =====

P=/opt/kiln-test-prefix
STAGE=$DIR/stage
R=$STAGE$P
if ! grep -q 'kiln.service' "$BUILD/cmake_install.cmake" 2>/dev/null; then
    echo "FAIL: $BUILD has no install rules of deploy/install.cmake (configured before it existed?):" \
        "run cmake -S $SRC -B $BUILD again"
    exit 1
fi
DESTDIR=$STAGE cmake --install "$BUILD" --prefix "$P" >install.out 2>&1 || fail "cmake --install: $(cat install.out)"
FILES="bin/kiln lib/systemd/system/kiln.service lib/sysusers.d/kiln.conf share/kiln/kiln.env
       share/kiln/nginx/kiln-gpus.conf share/kiln/nginx/kiln-proxy.conf share/doc/kiln/README.md"
for f in $FILES; do [ -f "$R/$f" ] || fail "not installed: $P/$f"; done
# nothing else, and nothing outside the prefix
extra=$(cd "$STAGE" && find . -type f | sed "s|^\.$P/||" | sort | grep -vxF -f <(tr -s ' \n' '\n' <<<"$FILES"))
[ -z "$extra" ] || fail "installed files nobody listed: $extra"
[ -x "$R/bin/kiln" ] && cmp -s "$KILN" "$R/bin/kiln" || fail "bin/kiln is not the built binary"
"$R/bin/kiln" --help >help.out 2>&1 && grep -q 'serve' help.out || fail "installed kiln --help: $(head -5 help.out)"
cmp -s "$SRC/deploy/kiln.env" "$R/share/kiln/kiln.env" || fail "share/kiln/kiln.env differs from deploy/kiln.env"
cmp -s "$SRC/deploy/kiln.sysusers" "$R/lib/sysusers.d/kiln.conf" || fail "sysusers.d/kiln.conf differs"
for n in kiln-gpus kiln-proxy; do
    cmp -s "$SRC/deploy/nginx/$n.conf" "$R/share/kiln/nginx/$n.conf" || fail "nginx/$n.conf differs"
done
UNIT=$R/lib/systemd/system/kiln.service
grep -qx "ExecStart=$P/bin/kiln serve" "$UNIT" || fail "unit: ExecStart is $(grep '^ExecStart' "$UNIT")"
grep -qx "Documentation=file://$P/share/doc/kiln/README.md" "$UNIT" || fail "unit: $(grep '^Documentation' "$UNIT")"
grep -n '@' "$UNIT" && fail "unit: a placeholder was left"
passed "install into DESTDIR with --prefix"

# ===== 2. systemd unit, sysusers, environment file =====

mkdir -p units
printf '[Unit]\nDescription=known good\n\n[Service]\nExecStart=/bin/true\n' >units/kiln-control.service
systemd-analyze verify "$DIR/units/kiln-control.service" >verify_control.out 2>&1
rc=$?
if [ "$rc" != 0 ] || [ -s verify_control.out ]; then
    # the tool itself does not work here: say so, do not blame the unit
    echo "SKIP: systemd-analyze verify fails on a known-good unit here (exit $rc), so the unit is not verified:"
    sed 's/^/  /' verify_control.out
else
    # the installed unit, ExecStart moved to the staged binary (verify checks that it exists)
    sed "s|^ExecStart=$P/bin/kiln |ExecStart=$R/bin/kiln |" "$UNIT" >units/kiln.service
    systemd-analyze verify "$DIR/units/kiln.service" >verify.out 2>&1
    rc=$?
    [ "$rc" = 0 ] && [ ! -s verify.out ] || fail "systemd-analyze verify kiln.service (exit $rc): $(cat verify.out)"
    # the check can fail: a bad value is reported (verify warns and exits 0 for those)
    mkdir -p units/bad
    sed 's/^Restart=on-failure/Restart=sometimes/' units/kiln.service >units/bad/kiln.service
    systemd-analyze verify "$DIR/units/bad/kiln.service" >verify_bad.out 2>&1
    grep -q 'sometimes' verify_bad.out || fail "systemd-analyze verify did not report Restart=sometimes: $(cat verify_bad.out)"
fi
grep -E '^(ProtectClock=yes|PrivateDevices=yes|DeviceAllow=|DevicePolicy=(closed|strict)|MemoryDenyWriteExecute=yes)' "$UNIT" &&
    fail "unit: a setting above blocks CUDA (/dev/nvidia*, the driver's JIT)"
for want in EnvironmentFile=-/etc/kiln/kiln.env Restart=on-failure User=kiln StateDirectory=kiln \
    WorkingDirectory=/var/lib/kiln; do
    grep -qx "$want" "$UNIT" || fail "unit: no $want"
done
if command -v systemd-sysusers >/dev/null; then
    mkdir -p sysroot/etc
    systemd-sysusers --dry-run --root="$DIR/sysroot" "$R/lib/sysusers.d/kiln.conf" >sysusers.out 2>&1 &&
        grep -q "Creating user 'kiln'" sysusers.out || fail "systemd-sysusers --dry-run: $(cat sysusers.out)"
else
    echo "note: no systemd-sysusers here; the sysusers file is not checked"
fi
# every KILN_* / CUDA_* line of the example, uncommented, with its paths made real here (the GPU
# lines alone: a build without a GPU backend accepts them for --print-config only)
mkdir -p srv/models/tokenizers/clip-l srv/comfyui-frontend/dist state logs && touch srv/comfyui-frontend/dist/index.html
sed -nE 's/^#((KILN|CUDA)_[A-Z0-9_]+=.*)/\1/p' "$SRC/deploy/kiln.env" |
    sed "s|/srv|$DIR/srv|; s|/var/lib/kiln|$DIR/state|; s|/var/log/kiln|$DIR/logs|" >all.env
[ "$(wc -l <all.env)" -ge 25 ] || fail "kiln.env: only $(wc -l <all.env) settings"
grep -vE '^(KILN_GPUS|CUDA_VISIBLE_DEVICES)=' all.env >cpu.env
env -i PATH="$PATH" "$KILN" serve --env-file "$DIR/cpu.env" --print-config >env.out 2>&1 ||
    fail "kiln.env's settings: $(cat env.out)"
for v in $(sed 's/=.*//' cpu.env); do # each one really reached kiln (its origin is the file)
    grep -q "cpu.env:$(grep -n "^$v=" cpu.env | cut -d: -f1))" env.out || fail "kiln.env: $v not used"
done
passed "systemd unit, sysusers, kiln.env"

# ===== 3a. nginx -t on the examples =====

NGX=$DIR/ngx
mkdir -p "$NGX"
# ngx_conf NAME FILE...: a minimal nginx.conf including FILEs, in the foreground, one process
ngx_conf() {
    local name=$1 f
    shift
    {
        echo "daemon off; master_process off; pid $NGX/$name.pid; error_log $NGX/$name.err;"
        echo "events {}"
        echo "http {"
        echo "  access_log off;"
        for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $NGX/tmp_$t;"; done
        for f in "$@"; do echo "  include $f;"; done
        echo "}"
    } >"$NGX/$name.conf"
}
ngx_test() { nginx -t -q -p "$NGX" -c "$NGX/$1.conf" -e "$NGX/$1.err" >"$NGX/$1.out" 2>&1; }
GPUS_CONF=$R/share/kiln/nginx/kiln-gpus.conf
PROXY_CONF=$R/share/kiln/nginx/kiln-proxy.conf
ngx_conf gpus "$GPUS_CONF" && ngx_test gpus || fail "nginx -t kiln-gpus.conf: $(cat "$NGX/gpus.out")"
ngx_conf proxy "$PROXY_CONF" && ngx_test proxy || fail "nginx -t kiln-proxy.conf: $(cat "$NGX/proxy.out")"
ngx_conf both "$GPUS_CONF" "$PROXY_CONF" && ngx_test both || fail "nginx -t both examples: $(cat "$NGX/both.out")"
sed 's/proxy_set_header X-TARGET-GPU 1;/proxy_set_header X-TARGET-GPU;/' "$GPUS_CONF" >"$NGX/broken.conf"
ngx_conf broken "$NGX/broken.conf" && ngx_test broken && fail "nginx -t accepted a broken copy"
for g in 0 1 2 3; do
    grep -A8 "listen 818$((g + 1));" "$GPUS_CONF" | grep -q "proxy_set_header X-TARGET-GPU $g;" ||
        fail "kiln-gpus.conf: port 818$((g + 1)) does not set X-TARGET-GPU $g"
done
passed "nginx -t on the examples"

# ===== 3b. The examples in front of kiln serve; its log file rotates =====

lib_tiny_ckpt "$DIR/models/checkpoints/tiny.safetensors"
mkdir -p "$DIR/logs"
LOGF=$DIR/logs/kiln.log
: >"$DIR/serve.log" # lib_serve reads it at once
lib_serve "$DIR/serve.log" 1 --cpu-workers 2 --threads 1 --models-dir "$DIR/models" --db '' --verbose debug \
    --log-file "$LOGF" --log-max-size 1 --log-keep 2
PID=$SPID
grep -q "log also in $LOGF" "$DIR/serve.log" || fail "panel: no line about the log file"

# five free consecutive ports: 4 GPU ports, then the reverse proxy. Another test running in
# parallel may take one between the check and nginx's bind: nginx then exits, and the ports are
# picked again (up to 3 starts). Ready means nginx is alive and listens on all five.
ngx_start() {
    for _ in 1 2 3 4 5 6 7 8; do
        NP=$((20000 + RANDOM % 30000))
        busy=0
        for ((p = NP; p < NP + 5; p++)); do port_busy "$p" && busy=1; done
        [ "$busy" = 0 ] && break
    done
    sed -e "s/server 127.0.0.1:8188;/server 127.0.0.1:$PORT;/" \
        -e "s/listen 8181;/listen 127.0.0.1:$NP;/" -e "s/listen 8182;/listen 127.0.0.1:$((NP + 1));/" \
        -e "s/listen 8183;/listen 127.0.0.1:$((NP + 2));/" -e "s/listen 8184;/listen 127.0.0.1:$((NP + 3));/" \
        "$GPUS_CONF" >"$NGX/run-gpus.conf"
    sed -e "s/server 127.0.0.1:8188;/server 127.0.0.1:$PORT;/" -e "s/listen 80;/listen 127.0.0.1:$((NP + 4));/" \
        "$PROXY_CONF" >"$NGX/run-proxy.conf"
    [ "$(grep -c "listen 127.0.0.1:" "$NGX/run-gpus.conf")" = 4 ] && grep -q "listen 127.0.0.1:" "$NGX/run-proxy.conf" &&
        [ "$(cat "$NGX"/run-*.conf | grep -c "server 127.0.0.1:$PORT;")" = 2 ] || fail "examples: ports not found to rewrite"
    ngx_conf run "$NGX/run-gpus.conf" "$NGX/run-proxy.conf"
    nginx -p "$NGX" -c "$NGX/run.conf" -e "$NGX/run.err" >"$NGX/run.out" 2>&1 &
    PID2=$!
    for ((i = 0; i < 50; i++)); do
        kill -0 "$PID2" 2>/dev/null || return 1 # exited: a port was taken after all
        up=0
        for ((p = NP; p < NP + 5; p++)); do port_busy "$p" && up=$((up + 1)); done
        [ "$up" = 5 ] && return 0
        sleep 0.1
    done
    return 1
}
started=0
for attempt in 1 2 3; do
    if ngx_start; then
        started=1
        break
    fi
    kill "$PID2" 2>/dev/null
    wait "$PID2" 2>/dev/null
    PID2=
done
[ "$started" = 1 ] || { echo "FAIL: nginx did not start: $(cat "$NGX/run.out" "$NGX/run.err")"; exit 1; }

# wf OUT PREFIX: a POST /prompt body from examples/demo.json on the tiny checkpoint, 64 px, 1 step
wf() {
    python3 - "$SRC/examples/demo.json" "$@" <<'PY'
import json, sys
src, out, prefix = sys.argv[1:4]
p = json.load(open(src))
p["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
p["3"]["inputs"].update(seed=3, steps=1)
p["5"]["inputs"].update(width=64, height=64)
p["9"]["inputs"]["filename_prefix"] = prefix
json.dump({"prompt": p}, open(out, "w"))
PY
}
# tasks DEV: kiln_tasks_total of device DEV (read from kiln directly)
tasks() {
    curl -s -m 10 "$URL/metrics" | sed -nE "s/^kiln_tasks_total\\{device=\"$1\",kind=\"cpu\"\\} ([0-9]+).*/\\1/p"
}
wf "$DIR/p.json" deploy
# GPU-1 port: WebSocket and POST through nginx; the client's own X-TARGET-GPU: 0 is replaced
if python3 "$WSC" run 127.0.0.1 $((NP + 1)) client-gpu1 "$DIR/p.json" "X-TARGET-GPU:0" >ws1.out 2>ws1.err; then
    [ "$(js ws1.out "list(j['history'].values())[0]['status']['status_str']")" = success ] ||
        fail "GPU-1 port: history $(head -c 300 ws1.out)"
else
    fail "GPU-1 port, ws_client.py run: $(tail -n 5 ws1.err)"
fi
[ "$(tasks 1)" = 1 ] && [ "$(tasks 0)" = 0 ] || fail "GPU-1 port: tasks device 0 = $(tasks 0), device 1 = $(tasks 1)"
# GPU-3 port: kiln has 2 devices, so the header nginx adds gets kiln's 400
expect_code gpu3 400 POST "http://127.0.0.1:$((NP + 3))/prompt" --data-binary "@$DIR/p.json" &&
    { [ "$(js "$DIR/gpu3.body" 'j["error"]["type"]')" = invalid_target_gpu ] || fail "GPU-3 port: $(cat "$DIR/gpu3.body")"; }
# reverse proxy: WebSocket, a prompt pinned by the client's header, a 2 MiB upload (> nginx's 1 MiB default)
PX=$((NP + 4))
if python3 "$WSC" run 127.0.0.1 "$PX" client-proxy "$DIR/p.json" "X-TARGET-GPU:0" >wsp.out 2>wsp.err; then
    [ "$(js wsp.out "j['first']['type']")" = status ] || fail "proxy: first WebSocket message $(js wsp.out "j['first']")"
    [ "$(js wsp.out "list(j['history'].values())[0]['status']['status_str']")" = success ] ||
        fail "proxy: history $(head -c 300 wsp.out)"
else
    fail "proxy, ws_client.py run: $(tail -n 5 wsp.err)"
fi
[ "$(tasks 0)" = 1 ] || fail "proxy: X-TARGET-GPU 0 not passed (device 0 ran $(tasks 0))"
python3 - "$DIR/big.png" <<'PY'
import os, struct, sys, zlib
w = h = 840  # random RGB rows: incompressible, about 2 MiB
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
raw = b"".join(b"\0" + os.urandom(w * 3) for _ in range(h))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
      chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
expect_code upload 200 POST "http://127.0.0.1:$PX/upload/image" -F "image=@$DIR/big.png;filename=big.png" &&
    { cmp -s "$DIR/big.png" "$DIR/input/big.png" || fail "proxy upload: stored file differs"; }
passed "nginx examples in front of kiln (X-TARGET-GPU per port, WebSocket, upload)"

# 2000 requests whose debug line is about 2 KB each: 4 MB of log for a 1 MiB limit
python3 - "$URL" >flood.cfg <<'PY'
import sys
pad = "x" * 1900
for i in range(2000):
    print(f'url = "{sys.argv[1]}/queue?n={i:05d}&pad={pad}"\noutput = "/dev/null"')
PY
curl -s -m 120 -K flood.cfg -w '%{http_code}\n' >flood.out 2>&1 || fail "flood: curl failed: $(tail -3 flood.out)"
[ "$(grep -c '^200$' flood.out)" = 2000 ] || fail "flood: $(sort flood.out | uniq -c | head)"
lib_stop_int "$PID" 30
[ "$STOP_RC" = 0 ] || fail "kiln serve exit $STOP_RC after SIGINT"
kill -TERM "$PID2" 2>/dev/null
lib_check_sanitizer "$DIR/serve.log"
[ -f "$LOGF" ] && [ -f "$LOGF.1" ] && [ -f "$LOGF.2" ] || fail "log files: $(ls "$DIR/logs")"
[ -e "$LOGF.3" ] && fail "log file .3 exists with --log-keep 2"
python3 - "$DIR/serve.log" "$LOGF" <<'PY' >rotate.out 2>&1 || fail "log rotation: $(cat rotate.out)"
import re, sys
err_log, path = sys.argv[1:3]
MAX = 1 << 20
line_re = re.compile(rb"^\d\d:\d\d:\d\d\.\d\d\d (debug|info |warn |error) ")
files = [path + ".2", path + ".1", path]  # oldest first
texts = [open(f, "rb").read() for f in files]
for f, t in zip(files, texts):
    assert 0 < len(t) <= MAX, f"{f}: {len(t)} bytes"
    assert t.endswith(b"\n"), f"{f}: last line cut"
for f, t in zip(files[:2], texts[:2]):  # rotated only when the next line did not fit
    assert len(t) > MAX - 2100, f"{f}: rotated at {len(t)} bytes"
lines = b"".join(texts).split(b"\n")[:-1]
for l in lines:
    assert line_re.match(l), f"malformed line in the log file: {l[:120]!r}"
# stderr's log lines (the panel aside): the files hold exactly their last len(lines), in order
err_lines = [l for l in open(err_log, "rb").read().split(b"\n") if line_re.match(l)]
assert err_lines[-len(lines):] == lines, "the log files are not the end of stderr's lines"
assert b"stopped" in lines[-1], f"last line {lines[-1][:100]!r}"
ns = [int(m.group(1)) for m in (re.search(rb"/queue\?n=(\d+)&", l) for l in lines) if m]
assert ns == list(range(ns[0], 2000)), "requests missing or out of order in the log files"
assert len(ns) > 1200, f"only {len(ns)} request lines kept"
print(f"{len(lines)} lines, requests {ns[0]}..1999, sizes {[len(t) for t in texts]}")
PY
passed "log file rotation (--log-max-size 1 --log-keep 2): $(tail -1 rotate.out)"

echo "deploy: $fails failure(s)"
[ "$fails" = 0 ]
