#!/usr/bin/env bash
# tests/fuzz/smoke.sh -- a bounded libFuzzer run of every tests/fuzz target: each runs for
# SECONDS (default 10) from its committed seeds (tests/fuzz/corpus/<name>/, read only: new
# inputs go to a scratch corpus under /tmp). Fails when a target crashes, leaks or times out;
# the crashing input is kept under /tmp and named in the output (add it to the corpus with
# the fix). Usage: tests/fuzz/smoke.sh BUILD_DIR [SECONDS]   (make fuzz-smoke does it all)
set -u
build=${1:?usage: smoke.sh BUILD_DIR [SECONDS]}
secs=${2:-10}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/kiln-fuzz-smoke-XXXXXX)
fail=0
for name in prompt safetensors png tokenizer env; do
    bin=$build/fuzz/fuzz_$name
    if [ ! -x "$bin" ]; then
        echo "smoke: $bin is missing (configure with CC=clang -DKILN_FUZZ=ON, build fuzz_targets)"
        fail=1
        continue
    fi
    mkdir -p "$work/$name/corpus" "$work/$name/crash"
    log=$work/$name/log
    start=$(date +%s)
    "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$work/$name/crash/" "$work/$name/corpus" "$here/corpus/$name" >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ $rc -ne 0 ]; then
        echo "smoke: fuzz_$name FAILED (exit $rc) after ${took}s; the log's end:"
        tail -40 "$log"
        echo "smoke: crashing input(s): $(ls "$work/$name/crash/"* 2>/dev/null | tr '\n' ' ')"
        fail=1
    else
        echo "smoke: fuzz_$name ok: ${runs:-?} inputs in ${took}s"
        rm -rf "$work/$name"
    fi
done
[ $fail -eq 0 ] && rm -rf "$work"
exit $fail
