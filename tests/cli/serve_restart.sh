#!/usr/bin/env bash
# tests/cli/serve_restart.sh -- nothing accepted is lost (issue 6 item 1): `kiln serve --db F`
# with 2 CPU devices and a random tiny checkpoint; 2 prompts finish, then 10 slower ones are
# queued and the server is killed with SIGKILL while one runs. Restarted on the same file, every
# prompt completes exactly once (one "executed" log line per prompt over both runs, one history
# entry each, ids and numbers unchanged, its output files on disk), the prompt that was running
# runs again, and the history from before the kill is intact. Then: --history-max bounds what
# a restart loads, a clean stop leaves no row behind, a file that is not a database stops
# `kiln serve` with exit 2. Rows are read with Python's sqlite3, independently of kiln.
# Usage: serve_restart.sh KILN_BINARY SOURCE_DIR (as CTest calls it). Needs curl and python3.
set -u
KILN=$(realpath "${1:?kiln binary}")
SRC=$(realpath "${2:?source dir}")
. "$(dirname "$0")/lib.sh"
lib_tmpdir kiln_cli_restart
PID=
cd "$DIR" || exit 1
lib_env KILN_DB KILN_HISTORY_MAX KILN_READAHEAD
export KILN_CACHE_DIR=$DIR/cache # the list of checkpoints read ahead at the next start
lib_need curl python3
DB=$DIR/kiln.db
# sql QUERY: rows of the database, one per line, read with Python's sqlite3
sql() { python3 -c 'import sqlite3, sys
for r in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]): print("|".join(map(str, r)))' "$DB" "$1"; }

# wf OUT ID SEED STEPS PREFIX: a POST /prompt body (with its prompt_id) from examples/demo.json
# on the tiny checkpoint; made before the server runs, so that submitting is one curl each
wf() {
    python3 - "$SRC/examples/demo.json" "$@" <<'PY'
import json, sys
src, out, pid, seed, steps, prefix = sys.argv[1:7]
p = json.load(open(src))
p["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
p["3"]["inputs"].update(seed=int(seed), steps=int(steps))
p["5"]["inputs"].update(width=64, height=64)
p["9"]["inputs"]["filename_prefix"] = prefix
json.dump({"prompt": p, "prompt_id": pid}, open(out, "w"))
PY
}
submit() { # submit BODYFILE: POST /prompt, must be 200
    local code
    code=$(curl -s -m 30 -o "$DIR/sub.json" -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary "@$1" "$URL/prompt")
    [ "$code" = 200 ] || fail "POST /prompt $1 -> $code: $(cat "$DIR/sub.json")"
}
# start LOG [ARGS...]: kiln serve on a free port with this database; sets PID and URL
start() {
    local log=$1
    shift
    lib_serve "$log" 1 --cpu-workers 2 --threads 1 --db "$DB" --models-dir "$DIR/models" \
        --output-directory "$DIR/output" --input-directory "$DIR/input" --temp-dir "$DIR/temp" "$@"
    PID=$SPID
}
# wait_done ID...: until every id is in /history (45 s at most); one Python process polls
wait_done() {
    python3 - "$URL" "$@" <<'PY' || fail "not finished after 45 s: $*"
import json, sys, time, urllib.request
url, ids = sys.argv[1], sys.argv[2:]
for _ in range(450):
    h = json.load(urllib.request.urlopen(url + "/history", timeout=10))
    if all(i in h for i in ids): sys.exit(0)
    time.sleep(0.1)
sys.exit(1)
PY
}
lib_tiny_ckpt "$DIR/models/checkpoints/tiny.safetensors"

# ===== First run: 2 prompts finish, 10 are queued, SIGKILL while one runs =====
B1=before-1 B2=before-2 N1=after-1
wf "$DIR/b1.json" $B1 1 1 before1
wf "$DIR/b2.json" $B2 2 1 before2
wf "$DIR/n.json" $N1 7 1 new
IDS=()
# enough steps that the ten cannot all finish before the kill below, few enough that a
# sanitizer build finishes them within wait_done's 45 s: ~0.01 s a step in a Release build here,
# several times that with ASan
STEPS=40
{ ldd "$KILN"; nm -D "$KILN"; } 2>/dev/null | grep -q asan && STEPS=6
for i in 0 1 2 3 4 5 6 7 8 9; do
    IDS+=("restart-$i")
    wf "$DIR/r$i.json" "restart-$i" $((100 + i)) $STEPS "r$i"
done
start "$DIR/run1.log"
submit "$DIR/b1.json"
submit "$DIR/b2.json"
wait_done "$B1" "$B2"
curl -s -m 10 -o "$DIR/before.json" "$URL/history"
NUMS=()
for i in 0 1 2 3 4 5 6 7 8 9; do # the number each got (a fast machine may have run some already)
    submit "$DIR/r$i.json"
    NUMS+=("$(sed -n 's/.*"number": *\([0-9]*\).*/\1/p' "$DIR/sub.json")") # no python here: keep it quick
done
NUMS=$(python3 -c "import sys; print(sorted(int(a) for a in sys.argv[1:]))" "${NUMS[@]}")
# kill while a prompt of the 10 runs (and before the last ones ran)
for ((i = 0; i < 300; i++)); do
    curl -s -m 10 -o "$DIR/q.json" "$URL/queue"
    grep -q '"queue_running": \[\[' "$DIR/q.json" && break
    sleep 0.05
done
kill -KILL "$PID"
wait "$PID" 2>/dev/null
PID=
running=$(sql "SELECT COUNT(*) FROM prompts WHERE state = 'running'")
pending=$(sql "SELECT COUNT(*) FROM prompts WHERE state = 'pending'")
[ "$running" -ge 1 ] || fail "no prompt marked running in the database after the kill"
[ $((running + pending)) -ge 2 ] || fail "the kill came too late: $running running, $pending pending"
[ "$(sql 'SELECT COUNT(*) FROM history')" = $((12 - running - pending)) ] ||
    fail "history rows $(sql 'SELECT COUNT(*) FROM history') + prompt rows $((running + pending)) != 12"
passed "killed with $running running and $pending pending"
sql "SELECT id, state, attempts FROM prompts ORDER BY number" >"$DIR/rows_after_kill.txt" # for a failure's report

# ===== Restart on the same file: everything completes exactly once =====
start "$DIR/run2.log"
grep -q "running it again" "$DIR/run2.log" ||
    fail "no 'running it again' line after the restart (rows after the kill: $(tr '\n' ' ' <"$DIR/rows_after_kill.txt"); $(head -1 "$DIR/run2.log"))"
wait_done "${IDS[@]}"
grep -q "prefetch: $DIR/models/checkpoints/tiny.safetensors read into the page cache in [0-9.]* s ([0-9]* MiB/s)\$" \
    "$DIR/run2.log" || fail "the reloaded prompts' checkpoint was not read ahead: $(grep prefetch "$DIR/run2.log")"
curl -s -m 10 -o "$DIR/after.json" "$URL/history"
[ "$(js "$DIR/after.json" 'len(j)')" = 12 ] || fail "/history has $(js "$DIR/after.json" 'len(j)') entries, expected 12"
for id in "${IDS[@]}"; do
    [ "$(js "$DIR/after.json" "j['$id']['status']['status_str']")" = success ] ||
        fail "$id: $(js "$DIR/after.json" "j['$id']['status']")"
    n=$(cat "$DIR/run1.log" "$DIR/run2.log" | grep -c "prompt $id executed")
    [ "$n" -le 1 ] || fail "$id executed $n times" # 0: the kill came between its commit and its log line
    for f in $(js "$DIR/after.json" "' '.join(i['filename'] for o in j['$id']['outputs'].values() for i in o['images'])"); do
        [ -s "$DIR/output/$f" ] || fail "$id: output $f missing"
    done
done
[ "$(js "$DIR/after.json" 'sorted(j[k]["prompt"][0] for k in j if k not in ("'"$B1"'", "'"$B2"'"))')" = "$NUMS" ] ||
    fail "numbers changed: $NUMS -> $(js "$DIR/after.json" '[j[k]["prompt"][0] for k in j]')"
python3 - "$DIR/before.json" "$DIR/after.json" <<'PY' || fail "history from before the kill changed"
import json, sys
b, a = (json.load(open(f)) for f in sys.argv[1:3])
sys.exit(0 if all(a.get(k) == v for k, v in b.items()) and list(a)[:len(b)] == list(b) else 1)
PY
[ "$(sql 'SELECT COUNT(*) FROM prompts')" = 0 ] || fail "prompt rows left: $(sql 'SELECT id, state FROM prompts')"
# a new prompt continues the numbering after the largest
submit "$DIR/n.json"
[ "$(js "$DIR/sub.json" 'j["number"]')" -gt "$(js "$DIR/after.json" 'max(v["prompt"][0] for v in j.values())')" ] ||
    fail "new number $(js "$DIR/sub.json" 'j["number"]') does not continue"
wait_done "$N1"
passed "restart: 10 prompts done exactly once, ids, numbers, outputs and old history intact"

# ===== A clean stop leaves nothing queued; --history-max bounds the reload =====
kill -INT "$PID"
wait "$PID"
rc=$?
PID=
[ "$rc" = 0 ] || fail "SIGINT: exit $rc"
[ "$(sql 'SELECT COUNT(*) FROM prompts')" = 0 ] || fail "rows after a clean stop"
start "$DIR/run3.log" --history-max 5
# nothing queued: the checkpoint the last prompts used is read ahead all the same (sched/prefetch.c)
[ "$(sed -n 2p "$DIR/cache/prefetch-v1.txt" | cut -d' ' -f3-)" = "$DIR/models/checkpoints/tiny.safetensors" ] ||
    fail "prefetch-v1.txt does not list the checkpoint: $(cat "$DIR/cache/prefetch-v1.txt")"
for ((i = 0; i < 100; i++)); do grep -q "ahead of any prompt" "$DIR/run3.log" && break; sleep 0.1; done
grep -q "prefetch: reading 1 checkpoint that the last run used ahead" "$DIR/run3.log" &&
    grep -q "prefetch: $DIR/models/checkpoints/tiny.safetensors read into the page cache .*, ahead of any prompt" \
        "$DIR/run3.log" || fail "the last run's checkpoint was not read ahead at start: $(grep prefetch "$DIR/run3.log")"
[ "$(curl -s -m 10 "$URL/history" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 5 ] ||
    fail "--history-max 5: /history has not 5 entries"
[ "$(curl -s -m 10 "$URL/history/$N1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 1 ] ||
    fail "--history-max 5 dropped the newest entry"
curl -s -m 10 -o /dev/null -H 'Content-Type: application/json' -d "{\"delete\": [\"$N1\"]}" "$URL/history"
[ "$(sql "SELECT COUNT(*) FROM history WHERE id = '$N1'")" = 0 ] || fail "POST /history delete left the row"
kill -INT "$PID"
wait "$PID"
PID=
passed "clean stop, --history-max, history delete"

# ===== A file that is not a database: exit 2 with a clear message =====
head -c 4096 /dev/urandom >"$DIR/junk.db"
"$KILN" serve --port 0 --cpu-workers 1 --db "$DIR/junk.db" --models-dir "$DIR/models" \
    --output-directory "$DIR/output" >"$DIR/junk.log" 2>&1
rc=$?
[ "$rc" = 2 ] || fail "junk database: exit $rc, expected 2"
grep -q "cannot use the database: database $DIR/junk.db" "$DIR/junk.log" || fail "junk database: $(cat "$DIR/junk.log")"
passed "a file that is not a database stops kiln serve (exit 2)"

[ "$fails" = 0 ] || { echo "$fails failure(s); logs in $DIR"; KILN_TEST_KEEP=1; exit 1; }
echo "all passed ($((SECONDS - T0)) s)"
