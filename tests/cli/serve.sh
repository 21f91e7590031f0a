#!/usr/bin/env bash
# tests/cli/serve.sh -- `kiln serve` end to end: the real server on free loopback ports with 3
# CPU devices (--cpu-workers 3 --gpu-ports BASE) and a random tiny checkpoint, driven with curl
# and a WebSocket client (tests/integration/ws_client.py, standard library only):
#  - txt2img the way ComfyUI's example scripts do it: over the socket (events, audience, feature
#    flags) and with curl (POST /prompt with client_id, poll /history/{id}, GET /view each image);
#  - routing by X-TARGET-GPU, extra_data.target_gpu and per-device port, proved by each
#    device's kiln_tasks_total in /metrics; an unknown device is a 400 listing the devices;
#  - isolation: 20 prompts pinned to device 0 while devices 1 and 2 serve their own;
#  - 40 concurrent submissions, each completing exactly once;
#  - /interrupt by prompt_id and on a device port, POST /queue delete and clear, /free, caching,
#    /object_info for every node class, the bad inputs of issue 3 (400, 413, 404, traversal,
#    non-image upload, unknown prompt id, filename_prefix escaping the output folder);
#  - SIGINT with a prompt running: graceful exit 0, no sanitizer report.
# Workflows are small (32-64 px, 1-4 steps) so the script stays well under 120 s under ASan.
# Usage: serve.sh KILN_BINARY SOURCE_DIR (as CTest calls it). Needs curl and python3.
set -u
KILN=$(realpath "${1:?kiln binary}")
SRC=$(realpath "${2:?source dir}")
WSC=$SRC/tests/integration/ws_client.py
. "$(dirname "$0")/lib.sh"
lib_tmpdir kiln_cli_serve
PID=
cd "$DIR" || exit 1
lib_env
lib_need curl python3

# ===== Helpers =====

# wf OUT SEED STEPS SIZE PREFIX [TARGET]: a POST /prompt body from examples/demo.json on the tiny
# checkpoint (extra_data.target_gpu = TARGET when given)
wf() {
    python3 - "$SRC/examples/demo.json" "$@" <<'EOF'
import json, sys
src, out, seed, steps, size, prefix = sys.argv[1:7]
p = json.load(open(src))
p["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
p["3"]["inputs"].update(seed=int(seed), steps=int(steps))
p["5"]["inputs"].update(width=int(size), height=int(size))
p["9"]["inputs"]["filename_prefix"] = prefix
body = {"prompt": p}
if len(sys.argv) > 7:
    body["extra_data"] = {"target_gpu": int(sys.argv[7])}
json.dump(body, open(out, "w"))
EOF
}

# submit NAME URL BODYFILE [CURL ARGS...]: POST /prompt, must be 200; prints the prompt_id
submit() {
    local name=$1 url=$2 body=$3
    shift 3
    local code
    code=$(req "$name" POST "$url/prompt" -H 'Content-Type: application/json' --data-binary "@$body" "$@")
    if [ "$code" != 200 ]; then
        fail "$name: POST $url/prompt -> $code: $(head -c 300 "$DIR/$name.body")"
        return 1
    fi
    js "$DIR/$name.body" 'j["prompt_id"]'
}

# tasks DEV: kiln_tasks_total of device DEV in /metrics
tasks() {
    curl -s -m 10 "$URL/metrics" | sed -nE "s/^kiln_tasks_total\\{device=\"$1\",kind=\"cpu\"\\} ([0-9]+).*/\\1/p"
}
tasks_all() { echo "$(tasks 0) $(tasks 1) $(tasks 2)"; }

# outputs PREFIX: how many files SaveImage wrote with this prefix
outputs() { find "$DIR/output" -maxdepth 1 -name "$1_*.png" | wc -l; }

# check_png FILE: PNG signature
check_png() {
    [ "$(od -An -tx1 -N 8 "$1" | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$1 is not a PNG"
}

# ===== Start the server =====

lib_tiny_ckpt "$DIR/models/checkpoints/tiny.safetensors"
LOG=$DIR/server.log
lib_serve "$LOG" 4 --cpu-workers 3 --threads 1 --metrics-every 5 --models-dir "$DIR/models" \
    --output-directory "$DIR/output" --input-directory "$DIR/input" --temp-dir "$DIR/temp" --max-upload-size 1
PID=$SPID
GPORT=$((PORT + 1))
dev_url() { echo "http://127.0.0.1:$((GPORT + $1))"; }

# the start-up panel (ASCII: stderr is a file), one line per worker, ready
grep -qE '^\+-+ kiln [^ ]+ -+\+$' "$LOG" || fail "no panel title"
grep -q '| CPU mode: 3 devices, one queue and one worker each' "$LOG" || fail "panel: no mode line"
for d in 0 1 2; do
    grep -qE "^\|  +$d  cpu:$d .* port $((GPORT + d)) +\|$" "$LOG" || fail "panel: no row for device $d on port $((GPORT + d))"
done
grep -q "| Listening   http://127.0.0.1:$PORT " "$LOG" || fail "panel: no listen address"
# the workers' threads log their first line on their own: the ready line may come first
for ((i = 0; i < 50; i++)); do [ "$(grep -c 'worker started' "$LOG")" = 3 ] && break; sleep 0.1; done
[ "$(grep -c 'worker started' "$LOG")" = 3 ] || fail "expected 3 'worker started' lines"
grep -q "ready: http://127.0.0.1:$PORT" "$LOG" || fail "no ready line"

[ "$(curl -s "$URL/prompt")" = '{"exec_info": {"queue_remaining": 0}}' ] || fail "GET /prompt on an idle server"
req qa0 GET "$URL/queue/all" >/dev/null
[ "$(js "$DIR/qa0.body" "[(q['gpu_id'], q['running_count'], q['pending_count'], q['queue_running'], q['queue_pending']) for q in j['queues']]")" = \
  '[[0, 0, 0, [], []], [1, 0, 0, [], []], [2, 0, 0, [], []]]' ] || fail "/queue/all at start: $(cat "$DIR/qa0.body")"
[ "$(js "$DIR/qa0.body" '[j["total_running"], j["total_pending"]]')" = '[0, 0]' ] || fail "/queue/all totals"
passed "start-up: panel, 3 workers, ready, empty queues"

# ===== txt2img over the WebSocket, as websockets_api_example.py =====
wf "$DIR/ws.json" 11 3 64 ws
if python3 "$WSC" run 127.0.0.1 "$PORT" client-A "$DIR/ws.json" >"$DIR/ws.out" 2>"$DIR/ws.err"; then
    W=$DIR/ws.out
    id=$(js "$W" 'j["prompt_id"]')
    [ "$(js "$W" 'j["first"]')" = '{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "client-A"}}' ] ||
        fail "ws: first message $(js "$W" 'j["first"]')"
    [ "$(js "$W" 'j["feature_flags"].get("supports_preview_metadata")')" = true ] || fail "ws: feature flags reply"
    # our events, in ComfyUI's order: start, cached, then executing/progress/executed per node,
    # success, and executing null; every event names our prompt
    [ "$(js "$W" "str(all(d.get('prompt_id') == '$id' for t, d in j['events'] if t != 'status'))")" = True ] ||
        fail "ws: an event for another prompt"
    types=$(js "$W" "' '.join(t for t, d in j['events'] if t not in ('status', 'progress_state'))")
    case "$types" in
        "execution_start execution_cached executing "*" execution_success executing") ;;
        *) fail "ws: event order '$types'" ;;
    esac
    [ "$(js "$W" "sorted(d['node'] for t, d in j['events'] if t == 'executing' and d['node'])")" = \
      '["3", "4", "5", "6", "7", "8", "9"]' ] || fail "ws: executing events $(js "$W" "[d['node'] for t, d in j['events'] if t == 'executing']")"
    [ "$(js "$W" "[(d['value'], d['max']) for t, d in j['events'] if t == 'progress' and d['node'] == '3']")" = \
      '[[1, 3], [2, 3], [3, 3]]' ] || fail "ws: KSampler progress $(js "$W" "[d for t, d in j['events'] if t == 'progress']")"
    [ "$(js "$W" "[d['output']['images'][0]['filename'] for t, d in j['events'] if t == 'executed']")" = '["ws_00001_.png"]' ] ||
        fail "ws: executed events"
    [ "$(js "$W" "sorted(set(j['bystander']))")" = '["status"]' ] || fail "ws: the other client saw $(js "$W" 'j["bystander"]')"
    [ "$(js "$W" "j['history']['$id']['status']['status_str']")" = success ] || fail "ws: history status"
    # each image through /view: the bytes SaveImage wrote
    img=$(js "$W" "j['history']['$id']['outputs']['9']['images'][0]")
    [ "$img" = '{"filename": "ws_00001_.png", "subfolder": "", "type": "output"}' ] || fail "ws: history image $img"
    expect_code view 200 GET "$URL/view?filename=ws_00001_.png&subfolder=&type=output"
    grep -qi '^content-type: image/png' "$DIR/view.head" || fail "/view: not image/png: $(cat "$DIR/view.head")"
    cmp -s "$DIR/view.body" "$DIR/output/ws_00001_.png" || fail "/view: not the file SaveImage wrote"
    check_png "$DIR/view.body"
else
    fail "ws_client.py: $(tail -n 5 "$DIR/ws.err")"
fi
python3 "$WSC" handshake 127.0.0.1 "$PORT" >"$DIR/hs.out" 2>&1 || fail "ws handshake: $(cat "$DIR/hs.out")"
[ "$(js "$DIR/hs.out" 'len(j["data"]["sid"])')" = 32 ] || fail "ws: a client without clientId gets a uuid hex sid"
python3 "$WSC" handshake 127.0.0.1 "$PORT" "/api/ws?clientId=viaapi" >"$DIR/hs2.out" 2>&1 || fail "ws /api/ws: $(cat "$DIR/hs2.out")"
[ "$(js "$DIR/hs2.out" 'j["data"]["sid"]')" = viaapi ] || fail "ws: /api/ws?clientId=viaapi: $(cat "$DIR/hs2.out")"
passed "txt2img over the WebSocket"

# ===== txt2img with curl: POST with client_id, poll /history, GET /view =====
wf "$DIR/curl.json" 12 2 64 curl
python3 -c 'import json,sys; b=json.load(open(sys.argv[1])); b["client_id"]="curl-client"; json.dump(b, open(sys.argv[1],"w"))' "$DIR/curl.json"
if id=$(submit curl "$URL" "$DIR/curl.json") && wait_history "$id"; then
    [ "$(js "$DIR/curl.body" 'sorted(j)')" = '["node_errors", "number", "prompt_id"]' ] || fail "POST /prompt reply keys"
    [ "$(status_of "$id")" = success ] || fail "curl: status $(status_of "$id")"
    [ "$(js "$DIR/hist_$id.json" "j['$id']['prompt'][3]['client_id']")" = curl-client ] || fail "curl: client_id not in extra_data"
    js "$DIR/hist_$id.json" "'\n'.join('%s|%s|%s' % (i['filename'], i['subfolder'], i['type']) for o in j['$id']['outputs'].values() for i in o['images'])" >"$DIR/imgs"
    [ "$(wc -l <"$DIR/imgs")" = 1 ] || fail "curl: $(wc -l <"$DIR/imgs") images"
    while IFS='|' read -r name sub type; do
        expect_code v 200 GET "$URL/api/view?filename=$name&subfolder=$sub&type=$type" # the /api prefix too
        check_png "$DIR/v.body"
        cmp -s "$DIR/v.body" "$DIR/output/$name" || fail "curl: /view $name differs from the file"
    done <"$DIR/imgs"
    # /system_stats says which device holds the checkpoint and where its bytes live (issue 7)
    expect_code stats 200 GET "$URL/system_stats"
    where=$(js "$DIR/stats.body" "[m['where'] for d in j['devices'] for m in d['models'] if m['path'].endswith('.safetensors')]")
    case "$where" in '["cpu '*' GiB"]') ;; *) fail "/system_stats devices[].models where: $where" ;; esac
fi
passed "txt2img with curl (poll /history, /view)"

# ===== Routing: header, extra_data.target_gpu, device port; proved by /metrics =====
before=$(tasks_all)
wf "$DIR/r1.json" 21 1 32 route
wf "$DIR/r2.json" 22 1 32 route 2
wf "$DIR/r3.json" 23 1 32 route
ids=()
ids+=("$(submit r1 "$URL" "$DIR/r1.json" -H 'X-TARGET-GPU: 1')")
ids+=("$(submit r2 "$URL" "$DIR/r2.json")")
ids+=("$(submit r3 "$(dev_url 2)" "$DIR/r3.json")")
for id in "${ids[@]}"; do wait_history "$id"; done
read -r a0 a1 a2 <<<"$before"
read -r b0 b1 b2 <<<"$(tasks_all)"
[ "$((b0 - a0)) $((b1 - a1)) $((b2 - a2))" = "0 1 2" ] ||
    fail "routing: tasks per device went $before -> $b0 $b1 $b2 (expected +0 +1 +2)"
expect_code bad_target 400 POST "$URL/prompt" -H 'X-TARGET-GPU: 7' --data-binary "@$DIR/r1.json"
[ "$(js "$DIR/bad_target.body" 'j["error"]["type"]')" = invalid_target_gpu ] || fail "bad target: $(cat "$DIR/bad_target.body")"
msg=$(js "$DIR/bad_target.body" 'j["error"]["message"]')
for d in cpu:0 cpu:1 cpu:2; do [[ "$msg" == *"$d"* ]] || fail "bad target: message '$msg' does not list $d"; done
expect_code bad_target2 400 POST "$URL/prompt" -H 'X-TARGET-GPU: x' --data-binary "@$DIR/r1.json"
# GET /queue on a device port has ComfyUI's shape
expect_code devq 200 GET "$(dev_url 1)/queue"
[ "$(js "$DIR/devq.body" 'str("queue_running" in j and "queue_pending" in j)')" = True ] || fail "device /queue: $(cat "$DIR/devq.body")"
passed "routing by header, extra_data and port; unknown device 400"

# ===== Isolation: 20 prompts pinned to device 0 (its port), devices 1 and 2 serve their own =====
before=$(tasks_all)
for i in $(seq 1 20); do wf "$DIR/iso$i.json" $((100 + i)) 4 64 iso; done
wf "$DIR/own1.json" 201 2 32 own
wf "$DIR/own2.json" 202 2 32 own
jobs_=()
for i in $(seq 1 20); do
    curl -s -m 30 -o "$DIR/iso$i.out" -X POST "$(dev_url 0)/prompt" --data-binary "@$DIR/iso$i.json" &
    jobs_+=($!)
done
wait "${jobs_[@]}" # (a bare wait would wait for the server too)
own1=$(submit own1 "$URL" "$DIR/own1.json" -H 'X-TARGET-GPU: 1')
own2=$(submit own2 "$URL" "$DIR/own2.json" -H 'X-TARGET-GPU: 2')
req qa_iso GET "$URL/queue/all" >/dev/null
iso_ids=()
for i in $(seq 1 20); do iso_ids+=("$(js "$DIR/iso$i.out" 'j["prompt_id"]')"); done
printf '%s\n' "${iso_ids[@]}" >"$DIR/iso_ids"
# while device 0 works through them, no other queue holds one of them
counts=$(js "$DIR/qa_iso.body" "[sum(r[1] in open('$DIR/iso_ids').read().split() for r in q['queue_running'] + q['queue_pending']) for q in j['queues']]")
[[ "$counts" =~ ^\[[0-9]+,\ 0,\ 0\]$ ]] || fail "isolation: pinned prompts per queue $counts"
[ "$(js "$DIR/qa_iso.body" 'j["queues"][0]["pending_count"] + j["queues"][0]["running_count"]')" -ge 10 ] ||
    fail "isolation: device 0 should still hold most of the 20 prompts: $(js "$DIR/qa_iso.body" 'j["queues"][0]["pending_count"]')"
wait_history "$own1"
wait_history "$own2"
for id in "${iso_ids[@]}"; do wait_history "$id" 90 || break; done
# history is in completion order: devices 1 and 2 finished theirs long before device 0's last
curl -s -o "$DIR/hall.json" "$URL/history"
pos=$(js "$DIR/hall.json" "[list(j).index(i) for i in ['$own1', '$own2', '${iso_ids[19]}']]")
python3 -c "import sys; a, b, c = $pos; sys.exit(0 if max(a, b) < c else 1)" ||
    fail "isolation: devices 1 and 2 waited for device 0 (history positions $pos)"
read -r a0 a1 a2 <<<"$before"
read -r b0 b1 b2 <<<"$(tasks_all)"
[ "$((b0 - a0)) $((b1 - a1)) $((b2 - a2))" = "20 1 1" ] ||
    fail "isolation: tasks per device went $before -> $b0 $b1 $b2 (expected +20 +1 +1)"
passed "isolation: 20 prompts on device 0, devices 1 and 2 unaffected"

# ===== 40 concurrent submissions, each completing exactly once =====
before=$(tasks_all)
for i in $(seq 1 40); do wf "$DIR/c$i.json" $((1000 + i)) 1 32 conc; done
jobs_=()
for i in $(seq 1 40); do
    curl -s -m 30 -o "$DIR/c$i.out" -X POST "$URL/prompt" --data-binary "@$DIR/c$i.json" &
    jobs_+=($!)
done
wait "${jobs_[@]}"
: >"$DIR/conc_ids"
for i in $(seq 1 40); do js "$DIR/c$i.out" 'j["prompt_id"]' >>"$DIR/conc_ids" || fail "concurrent $i: $(cat "$DIR/c$i.out")"; done
[ "$(sort -u "$DIR/conc_ids" | wc -l)" = 40 ] || fail "concurrent: $(sort -u "$DIR/conc_ids" | wc -l) distinct prompt ids"
while read -r id; do wait_history "$id" 90 || break; done <"$DIR/conc_ids"
curl -s -o "$DIR/hall.json" "$URL/history"
# no key twice in the history, each of the 40 once, each a success
python3 - "$DIR/hall.json" "$DIR/conc_ids" >"$DIR/conc.check" <<'EOF'
import json, sys
def pairs(kv):
    keys = [k for k, _ in kv]
    if len(keys) != len(set(keys)):
        print("duplicate keys")
    return dict(kv)
h = json.load(open(sys.argv[1]), object_pairs_hook=pairs)
ids = open(sys.argv[2]).read().split()
missing = [i for i in ids if i not in h]
bad = [i for i in ids if i in h and h[i]["status"]["status_str"] != "success"]
if missing or bad:
    print("missing", missing, "failed", bad)
names = [i["filename"] for p in ids if p in h for o in h[p]["outputs"].values() for i in o["images"]]
dups = sorted({n for n in names if names.count(n) > 1})
if dups:
    print("several prompts saved to the same file:", " ".join(dups))
EOF
[ -s "$DIR/conc.check" ] && fail "concurrent: $(cat "$DIR/conc.check")"
read -r a0 a1 a2 <<<"$before"
read -r b0 b1 b2 <<<"$(tasks_all)"
[ "$((b0 + b1 + b2 - a0 - a1 - a2))" = 40 ] || fail "concurrent: $((b0 + b1 + b2 - a0 - a1 - a2)) prompts ran, expected 40"
used=0
for d in "$((b0 - a0))" "$((b1 - a1))" "$((b2 - a2))"; do [ "$d" -gt 0 ] && used=$((used + 1)); done
[ "$used" -ge 2 ] || fail "concurrent: automatic routing used $used device(s) for 40 prompts"
[ "$(outputs conc)" = 40 ] || fail "concurrent: $(outputs conc) files saved, expected 40"
passed "40 concurrent submissions, each ran once (per device: +$((b0 - a0)) +$((b1 - a1)) +$((b2 - a2)))"

# ===== Caching and /free =====
wf "$DIR/cache.json" 31 2 32 cache
id1=$(submit cache1 "$URL" "$DIR/cache.json" -H 'X-TARGET-GPU: 1') && wait_history "$id1"
n1=$(outputs cache)
id2=$(submit cache2 "$URL" "$DIR/cache.json" -H 'X-TARGET-GPU: 1') && wait_history "$id2"
[ "$(outputs cache)" = "$n1" ] || fail "cache: an identical resubmission wrote a new file"
[ "$(js "$DIR/hist_$id2.json" "j['$id2']['outputs']")" = "$(js "$DIR/hist_$id1.json" "j['$id1']['outputs']")" ] ||
    fail "cache: the resubmission's outputs differ"
[ "$(status_of "$id2")" = success ] || fail "cache: resubmission status"
expect_code free 200 POST "$URL/free" -H 'Content-Type: application/json' -d '{"unload_models": true, "free_memory": true}'
for ((i = 0; i < 50; i++)); do grep -q '\[CPU 1\] /free' "$LOG" && break; sleep 0.1; done
grep -q '\[CPU 1\] /free' "$LOG" || fail "/free: device 1 did not log it"
id3=$(submit cache3 "$URL" "$DIR/cache.json" -H 'X-TARGET-GPU: 1') && wait_history "$id3"
[ "$(outputs cache)" = "$((n1 + 1))" ] || fail "/free: the cache survived (no new file after free_memory)"
passed "caching (no new file), /free drops the cache"

# ===== /interrupt: by prompt_id, and on a device port =====
wf "$DIR/long.json" 41 400 64 long
wf "$DIR/mid.json" 42 60 64 mid
long=$(submit long "$URL" "$DIR/long.json" -H 'X-TARGET-GPU: 2')
if wait_running 2 "$long"; then
    t=$SECONDS
    expect_code int1 200 POST "$URL/interrupt" -H 'Content-Type: application/json' -d '{"prompt_id": "not-running"}'
    sleep 0.3
    [ "$(curl -s "$URL/history/$long")" = "{}" ] || fail "interrupt: another prompt_id stopped it"
    expect_code int2 200 POST "$URL/interrupt" -H 'Content-Type: application/json' -d "{\"prompt_id\": \"$long\"}"
    wait_history "$long" 20
    [ $((SECONDS - t)) -le 15 ] || fail "interrupt: took $((SECONDS - t)) s"
    [ "$(status_of "$long")" = error ] || fail "interrupt: status $(status_of "$long")"
    js "$DIR/hist_$long.json" "[m[0] for m in j['$long']['status']['messages']]" | grep -q execution_interrupted ||
        fail "interrupt: no execution_interrupted message"
fi
# on device 1's port, an empty POST /interrupt stops device 1's prompt and not device 0's
long=$(submit long1 "$(dev_url 1)" "$DIR/long.json")
mid=$(submit mid0 "$(dev_url 0)" "$DIR/mid.json")
if wait_running 1 "$long" && wait_running 0 "$mid"; then
    expect_code int3 200 POST "$(dev_url 1)/interrupt"
    wait_history "$long" 20
    [ "$(status_of "$long")" = error ] || fail "device-port interrupt: status $(status_of "$long")"
    wait_history "$mid" 60
    [ "$(status_of "$mid")" = success ] || fail "device-port interrupt stopped device 0's prompt too"
fi
passed "/interrupt by prompt_id and on a device port"

# ===== POST /queue: delete and clear (pending prompts only) =====
long=$(submit ql "$URL" "$DIR/long.json" -H 'X-TARGET-GPU: 2')
if wait_running 2 "$long"; then
    p=()
    for i in 1 2 3; do
        wf "$DIR/q$i.json" $((50 + i)) 1 32 queued
        p+=("$(submit "q$i" "$(dev_url 2)" "$DIR/q$i.json")")
    done
    req dq GET "$(dev_url 2)/queue" >/dev/null
    [ "$(js "$DIR/dq.body" 'sorted(r[1] for r in j["queue_pending"])')" = "$(printf '%s\n' "${p[@]}" | sort | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().split()))')" ] ||
        fail "queue: pending on device 2 is $(js "$DIR/dq.body" '[r[1] for r in j["queue_pending"]]')"
    expect_code del 200 POST "$URL/queue" -H 'Content-Type: application/json' -d "{\"delete\": [\"${p[1]}\"]}"
    req dq GET "$URL/queue" >/dev/null
    [ "$(js "$DIR/dq.body" 'sorted(r[1] for r in j["queue_pending"])')" = "$(printf '%s\n' "${p[0]}" "${p[2]}" | sort | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().split()))')" ] ||
        fail "queue delete: pending is $(js "$DIR/dq.body" '[r[1] for r in j["queue_pending"]]')"
    expect_code clear 200 POST "$URL/queue" -H 'Content-Type: application/json' -d '{"clear": true}'
    req dq GET "$URL/queue" >/dev/null
    [ "$(js "$DIR/dq.body" 'len(j["queue_pending"]), len(j["queue_running"])')" = '[0, 1]' ] ||
        fail "queue clear: $(cat "$DIR/dq.body")"
    expect_code int4 200 POST "$URL/interrupt" -d "{\"prompt_id\": \"$long\"}"
    wait_history "$long" 20
    sleep 0.5
    for id in "${p[@]}"; do [ "$(curl -s "$URL/history/$id")" = "{}" ] || fail "queue: removed prompt $id ran"; done
    [ "$(outputs queued)" = 0 ] || fail "queue: removed prompts saved files"
fi
passed "POST /queue delete and clear"

# ===== /object_info for every node class =====
expect_code oi 200 GET "$URL/object_info"
classes=$(js "$DIR/oi.body" "' '.join(sorted(j))")
for c in CheckpointLoaderSimple CLIPTextEncode CLIPSetLastLayer ConditioningCombine ConditioningZeroOut \
         EmptyLatentImage LatentUpscale LatentUpscaleBy LatentFromBatch RepeatLatentBatch KSampler \
         KSamplerAdvanced VAEDecode VAEEncode LoadImage ImageScale SaveImage PreviewImage \
         GPUMemoryReserve GPUMemoryMonitor GPUMemoryCleanup; do
    [[ " $classes " == *" $c "* ]] || fail "/object_info lacks $c"
done
for c in $classes; do
    expect_code "oi_$c" 200 GET "$URL/object_info/$c"
    python3 - "$DIR/oi.body" "$DIR/oi_$c.body" "$c" <<'EOF' || fail "/object_info/$c"
import json, sys
full, one, c = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
assert list(one) == [c] and one[c] == full[c], "differs from /object_info"
e = one[c]
for k in ("input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
          "description", "category", "output_node"):
    assert k in e, f"{c}: no {k}"
assert e["name"] == c and len(e["output"]) == len(e["output_name"]) == len(e["output_is_list"])
EOF
done
[ "$(curl -s "$URL/object_info/NoSuchNode")" = "{}" ] || fail "/object_info/NoSuchNode is not {}"
[ "$(js "$DIR/oi.body" "j['CheckpointLoaderSimple']['input']['required']['ckpt_name'][0]")" = '["tiny.safetensors"]' ] ||
    fail "/object_info: ckpt_name options"
passed "/object_info for each of $(echo "$classes" | wc -w) node classes"

# ===== Bad input: a clear answer, and the server goes on =====
expect_code notjson 400 POST "$URL/prompt" -H 'Content-Type: application/json' --data-binary 'not json{'
js "$DIR/notjson.body" 'j["error"]' >/dev/null 2>&1 || fail "not JSON: body $(cat "$DIR/notjson.body")"
head -c 2000000 /dev/zero | tr '\0' 'a' >"$DIR/big.txt"
expect_code big 413 POST "$URL/prompt" -H 'Content-Type: application/json' --data-binary "@$DIR/big.txt"
js "$DIR/big.body" 'j["error"]' >/dev/null 2>&1 || fail "413: body is not a JSON error: $(head -c 200 "$DIR/big.body")"
expect_code noroute 404 GET "$URL/no/such/route"
expect_code noroute2 404 POST "$URL/api/nothing" -d '{}'
expect_code trav1 400 GET "$URL/view?filename=../server.log&type=output"
expect_code trav2 403 GET "$URL/view?filename=server.log&subfolder=../&type=output"
expect_code trav3 400 GET "$URL/view?filename=/etc/passwd"
expect_code nofile 404 GET "$URL/view?filename=missing.png&type=output"
expect_code badtype 400 GET "$URL/view?filename=ws_00001_.png&type=elsewhere"
printf 'hello, not an image\n' >"$DIR/note.png"
expect_code upload_text 400 POST "$URL/upload/image" -F "image=@$DIR/note.png"
[ -e "$DIR/input/note.png" ] && fail "a non-image upload was stored"
expect_code upload_png 200 POST "$URL/upload/image" -F "image=@$DIR/output/ws_00001_.png;filename=up.png"
[ "$(js "$DIR/upload_png.body" '[j["name"], j["subfolder"], j["type"]]')" = '["up.png", "", "input"]' ] ||
    fail "upload: reply $(cat "$DIR/upload_png.body")"
cmp -s "$DIR/input/up.png" "$DIR/output/ws_00001_.png" || fail "upload: stored file differs"
code=$(req upload_trav POST "$URL/upload/image" -F "image=@$DIR/output/ws_00001_.png;filename=up.png" -F "subfolder=../../escape")
[ "$code" = 400 ] || [ "$code" = 403 ] || fail "upload into ../../escape -> $code"
[ -e "$DIR/../escape" ] || [ -e "$DIR/escape" ] && fail "upload escaped the input folder"
[ "$(curl -s "$URL/history/no-such-prompt")" = "{}" ] || fail "unknown prompt id is not {}"
# a filename_prefix that leaves the output folder: refused, nothing written outside
wf "$DIR/esc.json" 61 1 32 "../escaped"
code=$(req esc POST "$URL/prompt" --data-binary "@$DIR/esc.json")
if [ "$code" = 200 ]; then
    id=$(js "$DIR/esc.body" 'j["prompt_id"]')
    if wait_history "$id"; then
        [ "$(status_of "$id")" = error ] || fail "filename_prefix ../escaped: status $(status_of "$id")"
    fi
elif [ "$code" != 400 ]; then
    fail "filename_prefix ../escaped: POST -> $code"
fi
[ -n "$(find "$DIR" -maxdepth 1 -name 'escaped*')" ] && fail "SaveImage wrote outside the output folder"
# still serving
[ "$(curl -s "$URL/prompt")" = '{"exec_info": {"queue_remaining": 0}}' ] || fail "after bad input: GET /prompt"
passed "bad input: 400, 413, 404, traversal refused, non-image upload, unknown id"

# ===== Metrics line in the log, /metrics format =====
grep -qE '\[CPU [0-2]\] tasks=[0-9]+, success=[0-9.]+%, queue=[0-9.]+, wait=[0-9.]+ms, exec=[0-9.]+ms, oom=0' "$LOG" ||
    fail "no metrics line in the log"
curl -s "$URL/metrics" >"$DIR/metrics.txt"
grep -q '^# TYPE kiln_tasks_total counter' "$DIR/metrics.txt" || fail "/metrics: no TYPE line"
passed "metrics"

# ===== SIGINT with a prompt running: graceful =====
long=$(submit last "$URL" "$DIR/long.json" -H 'X-TARGET-GPU: 0')
wait_running 0 "$long"
lib_stop_int "$PID" 20
rc=$STOP_RC
PID=
[ "$rc" = 0 ] || fail "exit $rc after SIGINT, expected 0"
grep -q 'SIGINT: shutting down' "$LOG" || fail "no shutdown line"
grep -q 'info  stopped$' "$LOG" || fail "no 'stopped' line"
lib_check_sanitizer "$LOG"
passed "SIGINT: graceful stop, no sanitizer report"

if [ "$fails" -ne 0 ]; then
    echo "serve.sh: $fails failure(s); server log tail:"
    tail -n 30 "$LOG"
    exit 1
fi
echo "serve.sh: all passed in $((SECONDS - T0)) s"
