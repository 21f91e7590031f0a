#!/usr/bin/env bash
# tests/cli/run.sh -- `kiln run` end to end on a random tiny checkpoint (the happy path):
# txt2img from a POST /prompt body (exit 0, ComfyUI's file names printed on stdout, PNG size and
# "prompt"/"workflow" text chunks), determinism per seed, a bare prompt, a prefix with a subfolder,
# img2img with KSamplerAdvanced/LatentUpscale/ConditioningCombine/CLIPSetLastLayer/LoadImage/
# VAEEncode, several sampler/scheduler pairs, explicit directory options, --help and usage errors.
# Workflows are small (64..128 px, 2-4 steps) so the script stays well under a minute under ASan.
# Usage: run.sh KILN_BINARY SOURCE_DIR (as CTest calls it).
set -u
KILN=$(realpath "${1:?kiln binary}")
SRC=$(realpath "${2:?source dir}")
WF=$SRC/tests/data/workflows
DIR=$(mktemp -d /tmp/kiln_cli_run_XXXXXX)
trap 'rm -rf "$DIR"' EXIT
cd "$DIR" || exit 1
# CTest runs tests in parallel on few cores: OpenMP's default spin-waiting then makes each run
# several times slower (measured 10x on 2 busy cores); sleeping waits keep the script fast.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# run_ok NAME ARGS...: `kiln run ARGS` must exit 0 with a clean stderr; stdout in NAME.out.
run_ok() {
    local name=$1; shift
    local t0=$SECONDS
    "$KILN" run "$@" >"$DIR/$name.out" 2>"$DIR/$name.err"
    local rc=$?
    if [ "$rc" != 0 ]; then
        fail "$name: kiln run $* -> exit $rc, expected 0; stderr:"
        tail -n 15 "$DIR/$name.err"
        return 1
    fi
    if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$DIR/$name.err"; then
        fail "$name: sanitizer report on stderr:"
        cat "$DIR/$name.err"
        return 1
    fi
    echo "ok: $name ($((SECONDS - t0)) s)"
}

# expect_stdout NAME LINE...: NAME.out is exactly these lines.
expect_stdout() {
    local name=$1; shift
    local want
    want=$(printf '%s\n' "$@")
    [ "$(cat "$DIR/$name.out")" = "$want" ] || fail "$name: stdout is '$(cat "$DIR/$name.out")', expected '$want'"
}

# variant SRC DST 'sed expressions': a copy of a fixture with edits; fails if the edit changed nothing.
variant() {
    sed -e "$3" "$1" >"$2"
    cmp -s "$1" "$2" && fail "variant $2: '$3' changed nothing in $1"
}

# be32 FILE OFFSET: the big-endian u32 at OFFSET.
be32() {
    local b
    read -r -a b < <(od -An -tu1 -j "$2" -N 4 "$1")
    [ "${#b[@]}" = 4 ] || { echo -1; return; }
    echo $(((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]))
}

# check_png FILE WIDTH HEIGHT: PNG signature, IHDR first with these dimensions, 8-bit RGB.
check_png() {
    local f=$1
    [ -s "$f" ] || { fail "$f missing or empty"; return 1; }
    [ "$(od -An -tx1 -N 8 "$f" | tr -d ' \n')" = 89504e470d0a1a0a ] || { fail "$f: no PNG signature"; return 1; }
    [ "$(dd if="$f" bs=1 skip=12 count=4 2>/dev/null)" = IHDR ] || { fail "$f: first chunk is not IHDR"; return 1; }
    local w h
    w=$(be32 "$f" 16)
    h=$(be32 "$f" 20)
    if [ "$w" != "$2" ] || [ "$h" != "$3" ]; then fail "$f: ${w}x$h, expected $2x$3"; fi
    # bit depth 8, colour type 2 (RGB), as ComfyUI's PIL save of an RGB image
    [ "$(od -An -tu1 -j 24 -N 2 "$f" | tr -s ' ')" = " 8 2" ] || fail "$f: not 8-bit RGB"
}

# text_chunk FILE KEY: prints the text of the tEXt chunk KEY (empty if none).
text_chunk() {
    local f=$1 key=$2 off len
    off=$(grep -abo "tEXt$key" "$f" | head -n 1 | cut -d: -f1)
    [ -n "$off" ] || return 0
    len=$(be32 "$f" $((off - 4)))
    # data = key, NUL, text
    dd if="$f" bs=1 skip=$((off + 4 + ${#key} + 1)) count=$((len - ${#key} - 1)) 2>/dev/null
}

# pixels FILE: everything from the first IDAT chunk on (the image, without the metadata).
pixels() {
    local off
    off=$(grep -abo IDAT "$1" | head -n 1 | cut -d: -f1)
    [ -n "$off" ] && tail -c +$((off - 3)) "$1"
}

# check_meta PNG WORKFLOW_JSON: (with python3 only) the PNG's tEXt chunks are exactly what
# ComfyUI writes: "prompt" = json.dumps(prompt), "workflow" = json.dumps(extra_pnginfo.workflow)
# (default separators, ASCII with \u escapes), and no other text chunks.
check_meta() {
    [ -x /usr/bin/python3 ] || return 0
    /usr/bin/python3 - "$1" "$2" <<'EOF' || fail "$1: metadata differs from ComfyUI's"
import json, struct, sys
data = open(sys.argv[1], "rb").read()
body = json.load(open(sys.argv[2], encoding="utf-8"))
prompt = body.get("prompt", body)
want = {"prompt": json.dumps(prompt)}
for k, v in body.get("extra_data", {}).get("extra_pnginfo", {}).items():
    want[k] = json.dumps(v)
got, i = {}, 8
while i < len(data):
    n, kind = struct.unpack(">I4s", data[i:i + 8])
    if kind in (b"tEXt", b"iTXt", b"zTXt"):
        assert kind == b"tEXt", "text chunk of type %r" % kind
        k, v = data[i + 8:i + 8 + n].split(b"\0", 1)
        got[k.decode("latin-1")] = v.decode("latin-1")
    i += 12 + n
for k in sorted(set(want) | set(got)):
    if got.get(k) != want.get(k):
        print("chunk %r: got %r..., expected %r..." % (k, (got.get(k) or "")[:300], (want.get(k) or "")[:300]))
        sys.exit(1)
EOF
}

t_start=$SECONDS

# ---- usage ----
"$KILN" run --help >"$DIR/help.out" 2>&1 || fail "kiln run --help: non-zero exit"
grep -q "usage: kiln run" "$DIR/help.out" || fail "kiln run --help prints no usage"
for args in "" "--models-dir" "--bogus x.json" "a.json b.json" "--output-dir"; do
    # shellcheck disable=SC2086
    "$KILN" run $args >/dev/null 2>"$DIR/usage.err"
    rc=$?
    [ "$rc" = 2 ] || fail "kiln run $args -> exit $rc, expected 2"
    grep -q "usage: kiln run" "$DIR/usage.err" || fail "kiln run $args prints no usage"
done

# ---- a tiny checkpoint ----
mkdir -p models/checkpoints input
"$KILN" ckpt --tiny models/checkpoints/tiny.safetensors >/dev/null 2>&1 || {
    echo "FAIL: kiln ckpt --tiny failed"
    exit 1
}

# ---- txt2img from a POST /prompt body ----
if run_ok txt2img "$WF/txt2img.json"; then
    expect_stdout txt2img output/ComfyUI_00001_.png
    png=output/ComfyUI_00001_.png
    check_png $png 128 64
    grep -aq 'tEXtprompt' $png || fail "$png: no tEXt prompt chunk"
    grep -aq 'tEXtworkflow' $png || fail "$png: no tEXt workflow chunk"
    prompt=$(text_chunk $png prompt)
    case $prompt in
    \{*\}) ;;
    *) fail "$png: prompt chunk is not a JSON object: '${prompt:0:80}'" ;;
    esac
    grep -q '"seed": 42' <<<"$prompt" || fail "$png: prompt chunk lacks the KSampler seed: '${prompt:0:200}'"
    grep -q '"class_type": "KSampler"' <<<"$prompt" || fail "$png: prompt chunk lacks the KSampler node"
    workflow=$(text_chunk $png workflow)
    grep -q 'workflow-chunk-marker' <<<"$workflow" || fail "$png: workflow chunk is not extra_pnginfo.workflow"
    check_meta $png "$WF/txt2img.json"
    cp $png input/source.png # for LoadImage below
fi

# same seed: the next counter, byte for byte the same file
if run_ok txt2img_again "$WF/txt2img.json"; then
    expect_stdout txt2img_again output/ComfyUI_00002_.png
    cmp -s output/ComfyUI_00001_.png output/ComfyUI_00002_.png || fail "same workflow and seed, different files"
fi

# another seed: different pixels
variant "$WF/txt2img.json" seed43.json 's/"seed": 42,/"seed": 43,/'
if run_ok seed43 seed43.json; then
    expect_stdout seed43 output/ComfyUI_00003_.png
    check_png output/ComfyUI_00003_.png 128 64
    grep -aq '"seed": 43' output/ComfyUI_00003_.png || fail "seed 43 not in the prompt chunk"
    cmp -s <(pixels output/ComfyUI_00001_.png) <(pixels output/ComfyUI_00003_.png) &&
        fail "seeds 42 and 43 give the same pixels"
    [ "$(pixels output/ComfyUI_00003_.png | wc -c)" -gt 100 ] || fail "no IDAT in output/ComfyUI_00003_.png"
fi

# a bare prompt (no "prompt" key), two SaveImage nodes, one with a subfolder in its prefix
if run_ok bare "$WF/bare_two_saves.json"; then
    expect_stdout bare output/bare_00001_.png output/sub/name_00001_.png
    check_png output/bare_00001_.png 64 64
    check_meta output/bare_00001_.png "$WF/bare_two_saves.json"
    check_png output/sub/name_00001_.png 64 64
    cmp -s output/bare_00001_.png output/sub/name_00001_.png || fail "the two SaveImage of one image differ"
    grep -aq 'tEXtprompt' output/bare_00001_.png || fail "bare prompt: no prompt chunk"
    grep -aq 'tEXtworkflow' output/bare_00001_.png && fail "bare prompt: a workflow chunk without extra_pnginfo"
fi
# ... again: the counters go on per prefix
if run_ok bare_again "$WF/bare_two_saves.json"; then
    expect_stdout bare_again output/bare_00002_.png output/sub/name_00002_.png
fi

# img2img: LoadImage -> VAEEncode -> KSamplerAdvanced (steps 1..3 of 4) -> LatentUpscale 128x128
# -> KSampler denoise 0.5, with CLIPSetLastLayer -2 and ConditioningCombine
if [ -s input/source.png ] && run_ok features "$WF/img2img_features.json"; then
    expect_stdout features output/features_00001_.png
    check_png output/features_00001_.png 128 128
    check_meta output/features_00001_.png "$WF/img2img_features.json"
fi

# a long prompt (several 77-token chunks) with weights, escapes, non-ASCII text and an embedding
# reference, batch_size 2: two files with different noise; the prompt chunk is ASCII with \u escapes
if run_ok text "$WF/text_batch.json"; then
    expect_stdout text output/text_00001_.png output/text_00002_.png
    check_png output/text_00001_.png 64 64
    check_png output/text_00002_.png 64 64
    cmp -s <(pixels output/text_00001_.png) <(pixels output/text_00002_.png) &&
        fail "the two images of a batch have the same pixels"
    grep -aqF 'caf\u00e9 \u65e5\u672c\u8a9e \ud83c\udf89 \"quoted\" \\backslash\nnew line' output/text_00001_.png ||
        fail "prompt chunk: non-ASCII text not written as json.dumps does"
    check_meta output/text_00001_.png "$WF/text_batch.json"
fi

# LoadImage -> SaveImage: u8 -> /255 -> *255 -> u8 is exact, so the pixels come back unchanged
if [ -s input/source.png ] && run_ok copy "$WF/load_save.json"; then
    expect_stdout copy output/copy_00001_.png
    check_png output/copy_00001_.png 128 64
    cmp -s <(pixels input/source.png) <(pixels output/copy_00001_.png) || fail "LoadImage -> SaveImage changed the pixels"
fi

# LoadImage 128x64 -> ImageScale 100x70 -> VAEEncode (crops to 96x64 as ComfyUI) -> VAEDecode;
# PreviewImage writes to temp/ with a random ComfyUI_temp_xxxxx_ prefix
if [ -s input/source.png ] && run_ok vae "$WF/vae_roundtrip.json"; then
    [ "$(sed -n 1p "$DIR/vae.out")" = output/vae_00001_.png ] || fail "vae: stdout $(cat "$DIR/vae.out")"
    preview=$(sed -n 2p "$DIR/vae.out")
    [[ $preview =~ ^temp/ComfyUI_temp_[a-z]{5}_00001_\.png$ ]] || fail "vae: preview file '$preview'"
    [ "$(wc -l <"$DIR/vae.out")" = 2 ] || fail "vae: stdout $(cat "$DIR/vae.out")"
    check_png output/vae_00001_.png 96 64
    check_png "$preview" 100 70
fi

# explicit directories, from another working directory; paths printed as given
mkdir -p elsewhere
(cd elsewhere && run_ok dirs --models-dir "$DIR/models" --output-dir "$DIR/out2" --temp-dir "$DIR/tmp2" \
    --input-dir "$DIR/input" "$WF/bare_two_saves.json") &&
    expect_stdout dirs "$DIR/out2/bare_00001_.png" "$DIR/out2/sub/name_00001_.png"
[ -e elsewhere/output ] && fail "--output-dir given, but output/ was created in the working directory"
cmp -s "$DIR/out2/bare_00001_.png" output/bare_00001_.png || fail "same workflow, other directories, different file"

# sampler/scheduler pairs
for pair in euler_ancestral:karras dpmpp_2m:exponential lcm:sgm_uniform heun:beta ddim:ddim_uniform \
    dpmpp_2s_ancestral:normal lms:simple; do
    s=${pair%%:*}
    k=${pair##*:}
    variant "$WF/txt2img.json" "$s.json" \
        "s/\"sampler_name\": \"euler\"/\"sampler_name\": \"$s\"/; s/\"scheduler\": \"normal\"/\"scheduler\": \"$k\"/; s/\"filename_prefix\": \"ComfyUI\"/\"filename_prefix\": \"$s\"/"
    if run_ok "$s-$k" "$s.json"; then
        expect_stdout "$s-$k" "output/${s}_00001_.png"
        check_png "output/${s}_00001_.png" 128 64
    fi
done

echo "run.sh: $((SECONDS - t_start)) s"
if [ "$fails" -gt 0 ]; then
    echo "$fails failure(s)"
    exit 1
fi
echo "run.sh: all checks passed"
