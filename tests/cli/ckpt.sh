#!/usr/bin/env bash
# tests/cli/ckpt.sh -- `kiln ckpt` end to end: exit codes (0 ok, 1 failure, 2 usage), the tiny
# checkpoint (< 20 MB, readable header with 1137 tensors, deterministic per seed, different
# across seeds) and the tokenizer files written next to it.
# Usage: ckpt.sh KILN_BINARY SOURCE_DIR (as CTest calls it).
set -u
KILN=${1:?kiln binary}
DIR=$(mktemp -d /tmp/kiln_cli_ckpt_XXXXXX)
trap 'rm -rf "$DIR"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

expect_rc() { # expect_rc CODE ARGS...
    local want=$1; shift
    "$KILN" ckpt "$@" >"$DIR/out" 2>"$DIR/err"
    local rc=$?
    [ "$rc" = "$want" ] || fail "kiln ckpt $* -> $rc, expected $want ($(cat "$DIR/err"))"
}

# usage errors
expect_rc 2
expect_rc 2 "$DIR/x.safetensors"
expect_rc 2 --tiny --sd15 "$DIR/x.safetensors"
expect_rc 2 --tiny --seed
expect_rc 2 --tiny --seed abc "$DIR/x.safetensors"
expect_rc 2 --tiny --bogus "$DIR/x.safetensors"
expect_rc 2 --tiny "$DIR/a" "$DIR/b"
expect_rc 0 --help
grep -q "usage: kiln ckpt" "$DIR/out" || fail "--help prints no usage"

# failures
expect_rc 1 --tiny "$DIR/missing-dir/x.safetensors"
grep -q "missing-dir" "$DIR/err" || fail "error message does not name the path: $(cat "$DIR/err")"
[ -e "$DIR/missing-dir" ] && fail "a failed write left files"

# the tiny checkpoint
expect_rc 0 --tiny --seed 5 "$DIR/a.safetensors"
grep -q "1137 tensors" "$DIR/out" || fail "unexpected report: $(cat "$DIR/out")"
size=$(stat -c %s "$DIR/a.safetensors")
[ "$size" -lt 20000000 ] || fail "tiny checkpoint is $size bytes (>= 20 MB)"
[ -s "$DIR/vocab.json" ] || fail "no vocab.json next to the checkpoint"
[ -s "$DIR/merges.txt" ] || fail "no merges.txt next to the checkpoint"
[ -e "$DIR/a.safetensors.tmp" ] && fail "temporary file left behind"
# header: u64 little-endian length, then JSON starting with '{'
hlen=$(od -An -t u8 -N 8 "$DIR/a.safetensors" | tr -d ' ')
[ $((hlen % 8)) = 0 ] || fail "header length $hlen is not a multiple of 8"
[ "$(dd if="$DIR/a.safetensors" bs=1 skip=8 count=1 2>/dev/null)" = "{" ] || fail "header is not a JSON object"

expect_rc 0 --tiny --seed 5 "$DIR/b.safetensors"
cmp -s "$DIR/a.safetensors" "$DIR/b.safetensors" || fail "same seed, different files"
expect_rc 0 --tiny --seed=6 "$DIR/c.safetensors"
cmp -s "$DIR/a.safetensors" "$DIR/c.safetensors" && fail "different seeds, same file"

if [ "$fails" -gt 0 ]; then
    echo "$fails failure(s)"
    exit 1
fi
echo "ckpt.sh: all checks passed"
