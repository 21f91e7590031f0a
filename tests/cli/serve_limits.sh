#!/usr/bin/env bash
# tests/cli/serve_limits.sh -- `kiln serve`'s limits and access control, end to end: the real
# server on a free loopback port (one CPU device, a random tiny checkpoint) started with
# --api-token, --max-nodes 20 and KILN_MAX_WS=2 (the size limits at their defaults), driven with
# curl and a small WebSocket client (tests/integration/ws_client.py's):
#  - 401 + WWW-Authenticate: Bearer without or with a wrong token, on plain routes, /view and the
#    /ws upgrade; the header or ?token= (on /ws and /view only) passes; /system_stats never
#    shows the token;
#  - too_many_nodes (21 nodes), batch_too_large (batch 65), image_too_large (4096x4096 batch
#    17), and the issue-4 case (4096x4096 batch 16) accepted while a long prompt blocks the
#    device (it is deleted from the queue before it could run);
#  - WebSockets: a third socket gets a 503, a freed slot is reusable, a 70 KB client message
#    closes the socket with status 1009;
#  - a client that sends half a request and stalls does not hold up other requests;
#  - --listen 0.0.0.0 without a token warns in the panel and the log; with one it does not.
# Usage: serve_limits.sh KILN_BINARY SOURCE_DIR (as CTest calls it). Needs curl and python3.
set -u
KILN=$(realpath "${1:?kiln binary}")
SRC=$(realpath "${2:?source dir}")
. "$(dirname "$0")/lib.sh"
lib_tmpdir kiln_cli_serve_limits
PID= PID2=
cd "$DIR" || exit 1
lib_env KILN_API_TOKEN KILN_MAX_NODES KILN_MAX_PIXELS KILN_MAX_BATCH KILN_MAX_WS KILN_LISTEN
lib_need curl python3
TOKEN=limits-test-token-$RANDOM$RANDOM
AUTH="Authorization: Bearer $TOKEN"
CPUFLAG=()
"$KILN" gpus 2>&1 | grep -q '^build: CUDA backend' && CPUFLAG=(--cpu)

# expect NAME CODE TYPE METHOD URL [CURL ARGS...]: the status must be CODE and, when TYPE is
# not -, the body ComfyUI's error shape with error.type TYPE
expect() {
    local name=$1 want=$2 type=$3
    shift 3
    expect_code "$name" "$want" "$@" || return 1
    [ "$type" = - ] && return 0
    local shape
    shape=$(js "$DIR/$name.body" "[j['error']['type'], sorted(j['error']), type(j['error']['message']).__name__]")
    [ "$shape" = "[\"$type\", [\"details\", \"extra_info\", \"message\", \"type\"], \"str\"]" ] ||
        fail "$name: error shape $shape, expected type $type: $(head -c 300 "$DIR/$name.body")"
}

# wf OUT STEPS SIZE BATCH [EXTRA_NODES]: a POST /prompt body from examples/demo.json on the tiny
# checkpoint; EXTRA_NODES more (unconnected) EmptyLatentImage nodes
wf() {
    python3 - "$SRC/examples/demo.json" "$@" <<'EOF'
import json, sys
src, out, steps, size, batch = sys.argv[1:6]
extra = int(sys.argv[6]) if len(sys.argv) > 6 else 0
p = json.load(open(src))
p["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
p["3"]["inputs"].update(seed=1, steps=int(steps))
p["5"]["inputs"].update(width=int(size), height=int(size), batch_size=int(batch))
for i in range(extra):
    p["x%d" % i] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
json.dump({"prompt": p}, open(out, "w"))
EOF
}

# start NAME ARGS...: kiln serve on a free port (PORT, URL set), log in NAME.log; PID of it in SPID
start() {
    local name=$1
    shift
    lib_serve "$DIR/$name.log" 1 "${CPUFLAG[@]}" --cpu-workers 1 --threads 1 --models-dir "$DIR/models" \
        --output-directory "$DIR/output" --input-directory "$DIR/input" --temp-dir "$DIR/temp" "$@"
}

lib_tiny_ckpt "$DIR/models/checkpoints/tiny.safetensors"

# ===== A token and small limits =====
KILN_MAX_WS=2 start main --api-token "$TOKEN" --max-nodes 20
PID=$SPID
grep -q 'without --api-token' "$DIR/main.log" && fail "a loopback server with a token warns: $(cat "$DIR/main.log")"

# ===== Access control =====
expect noauth 401 unauthorized GET "$URL/queue"
grep -qi '^WWW-Authenticate: Bearer' "$DIR/noauth.head" || fail "401 without WWW-Authenticate: Bearer: $(cat "$DIR/noauth.head")"
expect wrong 401 unauthorized GET "$URL/queue" -H "Authorization: Bearer x$TOKEN"
expect short 401 unauthorized GET "$URL/queue" -H "Authorization: Bearer ${TOKEN%?}"
expect post_noauth 401 unauthorized POST "$URL/prompt" --data-binary '{}'
expect api_noauth 401 unauthorized GET "$URL/api/object_info"
expect query_elsewhere 401 unauthorized GET "$URL/queue?token=$TOKEN"
expect good 200 - GET "$URL/queue" -H "$AUTH"
expect stats 200 - GET "$URL/system_stats" -H "$AUTH"
grep -q "$TOKEN" "$DIR/stats.body" && fail "/system_stats shows the token: $(cat "$DIR/stats.body")"
grep -q '"\*\*\*"' "$DIR/stats.body" || fail "/system_stats argv without the masked token: $(head -c 400 "$DIR/stats.body")"
passed "access control on HTTP routes"

# ===== Prompt limits =====
wf "$DIR/n21.json" 1 32 1 14 # 7 nodes + 14
wf "$DIR/n20.json" 1 32 1 13
expect nodes21 400 too_many_nodes POST "$URL/prompt" -H "$AUTH" --data-binary "@$DIR/n21.json"
grep -q '21 nodes' "$DIR/nodes21.body" || fail "too_many_nodes does not say how many: $(cat "$DIR/nodes21.body")"
expect nodes20 200 - POST "$URL/prompt" -H "$AUTH" --data-binary "@$DIR/n20.json"
N20=$(js "$DIR/nodes20.body" 'j["prompt_id"]')
wf "$DIR/b65.json" 1 64 65
expect batch65 400 batch_too_large POST "$URL/prompt" -H "$AUTH" --data-binary "@$DIR/b65.json"
[ "$(js "$DIR/batch65.body" "j['node_errors']['5']['errors'][0]['extra_info']['input_name']")" = batch_size ] ||
    fail "batch_too_large does not name node 5's batch_size: $(cat "$DIR/batch65.body")"
wf "$DIR/big17.json" 1 4096 17
expect big17 400 image_too_large POST "$URL/prompt" -H "$AUTH" --data-binary "@$DIR/big17.json"
[ "$(js "$DIR/big17.body" "list(j['node_errors'])")" = '["5"]' ] || fail "image_too_large node_errors: $(cat "$DIR/big17.body")"
wf "$DIR/big16.json" 1 4096 16
wf "$DIR/long.json" 2000 64 1
# the issue-4 case is accepted: queued behind a long prompt, then deleted before it runs
expect long 200 - POST "$URL/prompt" -H "$AUTH" --data-binary "@$DIR/long.json"
LONG=$(js "$DIR/long.body" 'j["prompt_id"]')
for ((i = 0; i < 300; i++)); do
    curl -s -m 5 -H "$AUTH" -o "$DIR/q.json" "$URL/queue"
    [ "$(js "$DIR/q.json" "str(any(r[1] == '$LONG' for r in j['queue_running']))")" = True ] && break
    sleep 0.1
done
expect big16 200 - POST "$URL/prompt" -H "$AUTH" --data-binary "@$DIR/big16.json"
BIG=$(js "$DIR/big16.body" 'j["prompt_id"]')
expect del 200 - POST "$URL/queue" -H "$AUTH" --data-binary "{\"delete\": [\"$BIG\"]}"
expect intr 200 - POST "$URL/interrupt" -H "$AUTH"
curl -s -m 5 -H "$AUTH" -o "$DIR/hbig.json" "$URL/history/$BIG"
[ "$(cat "$DIR/hbig.json")" = '{}' ] || fail "the 4096x4096x16 prompt ran: $(head -c 300 "$DIR/hbig.json")"
passed "too_many_nodes, batch_too_large, image_too_large; 4096x4096 batch 16 accepted"

# /view: ?token= passes (the 20-node prompt's image), no token does not
for ((i = 0; i < 600; i++)); do
    curl -s -m 5 -H "$AUTH" -o "$DIR/h20.json" "$URL/history/$N20"
    [ "$(head -c 2 "$DIR/h20.json")" != '{}' ] && break
    sleep 0.1
done
IMG=$(js "$DIR/h20.json" "j['$N20']['outputs']['9']['images'][0]['filename']" 2>/dev/null)
if [ -n "$IMG" ]; then
    expect view_noauth 401 unauthorized GET "$URL/view?filename=$IMG&type=output"
    expect view_query 200 - GET "$URL/view?filename=$IMG&type=output&token=$TOKEN"
    expect view_header 200 - GET "$URL/view?filename=$IMG&type=output" -H "$AUTH"
    cmp -s "$DIR/view_query.body" "$DIR/output/$IMG" || fail "/view?token= did not send $IMG"
else
    fail "the 20-node prompt has no image: $(head -c 300 "$DIR/h20.json")"
fi
passed "/view with ?token="

# ===== WebSockets =====
cat >"$DIR/wst.py" <<'EOF'
import socket, struct, sys, time
sys.path.insert(0, sys.argv[1])
from ws_client import WebSocket
port, token = int(sys.argv[2]), sys.argv[3]

def upgrade(path):
    """The status line of a raw upgrade request."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        c = s.recv(4096)
        if not c:
            break
        head += c
    s.close()
    return head.split(b"\r\n")[0].decode(), head.decode("latin-1")

def status_of(ws):
    m = ws.recv_json(time.time() + 10)
    assert m["type"] == "status", m

def opened(path, tries=50):
    for _ in range(tries):
        try:
            return WebSocket("127.0.0.1", port, path, timeout=10)
        except RuntimeError:
            time.sleep(0.05)
    raise RuntimeError(f"{path}: refused for 2.5 s")

fails = []
line, head = upgrade("/ws")
if " 401 " not in line or "www-authenticate: bearer" not in head.lower():
    fails.append(f"/ws without a token: {line!r}")
line, _ = upgrade("/ws?token=wrong")
if " 401 " not in line:
    fails.append(f"/ws with a wrong token: {line!r}")
a = opened(f"/ws?clientId=a&token={token}")
b = opened(f"/ws?clientId=b&token={token}")
status_of(a), status_of(b)
line, head = upgrade(f"/ws?clientId=c&token={token}")
if " 503 " not in line or "too_many_websockets" not in head + str(line):
    pass  # the body may come after the head: checked by status only
if " 503 " not in line:
    fails.append(f"a third socket: {line!r}, expected 503")
b.close()
c = opened(f"/ws?clientId=c&token={token}")  # the freed slot
status_of(c)
# a 70 KB message closes the socket with 1009
c._send(0x1, b" " * 70000)
code = None
try:
    while True:
        c.recv_json(time.time() + 10)
except EOFError as e:
    code = str(e)
except OSError as e:
    code = "timeout " + str(e)
if not code or "\\x03\\xf1" not in code:
    fails.append(f"a 70 KB message: {code!r}, expected a close frame with status 1009")
# a small message keeps the other socket open
a.send_json({"type": "feature_flags", "data": {}})
m = a.recv_json(time.time() + 10)
if m.get("type") != "feature_flags":
    fails.append(f"feature_flags reply: {m!r}")
a.close()
print("\n".join(fails) if fails else "ok")
EOF
out=$(python3 "$DIR/wst.py" "$SRC/tests/integration" "$PORT" "$TOKEN" 2>&1)
[ "$out" = ok ] || fail "websockets: $out"
passed "WebSocket token, cap (503) and message size (1009)"

# ===== A stalled client does not hold up the others =====
python3 - "$PORT" "$TOKEN" >"$DIR/stall.out" 2>&1 <<'EOF' &
import socket, sys, time
port, token = int(sys.argv[1]), sys.argv[2]
socks = []
for req in (f"POST /prompt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 5000\r\n\r\n{{\"pro",
            "GET /queue HTTP/1.1\r\nHost: x\r\n"):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req.encode())
    socks.append(s)
print("stalling", flush=True)
time.sleep(8)
EOF
SPY=$!
for ((i = 0; i < 50; i++)); do grep -q stalling "$DIR/stall.out" && break; sleep 0.1; done
grep -q stalling "$DIR/stall.out" || fail "the stalling client did not start: $(cat "$DIR/stall.out")"
t0=$(date +%s%N)
for i in 1 2 3 4 5; do expect during$i 200 - GET "$URL/queue" -H "$AUTH"; done
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$ms" -lt 3000 ] || fail "5 requests took $ms ms while a client stalled"
kill "$SPY" 2>/dev/null
wait "$SPY" 2>/dev/null
passed "a stalled client holds up nobody (5 requests in $ms ms)"

kill -TERM "$PID"
wait "$PID"
rc=$?
[ "$rc" = 0 ] || fail "SIGTERM -> exit $rc: $(tail -5 "$DIR/main.log")"
lib_check_sanitizer "$DIR/main.log"
PID=

# ===== Exposed without a token: a warning =====
start exposed --listen 0.0.0.0
PID2=$SPID
grep -q 'listening on 0.0.0.0 without --api-token' "$DIR/exposed.log" || fail "no panel note for 0.0.0.0: $(cat "$DIR/exposed.log")"
grep -qE 'warn .*without --api-token.*KILN_API_TOKEN' "$DIR/exposed.log" || fail "no log warning for 0.0.0.0"
kill -TERM "$PID2"
wait "$PID2"
PID2=
KILN_API_TOKEN=$TOKEN start guarded --listen 0.0.0.0
PID2=$SPID
grep -q 'without --api-token' "$DIR/guarded.log" && fail "a token still warns: $(cat "$DIR/guarded.log")"
expect env_token 401 unauthorized GET "$URL/queue"
kill -TERM "$PID2"
wait "$PID2"
PID2=
passed "0.0.0.0 without a token warns; KILN_API_TOKEN silences it and applies"

echo "serve_limits.sh: $fails failure(s) in $((SECONDS - T0)) s"
[ "$fails" = 0 ]
