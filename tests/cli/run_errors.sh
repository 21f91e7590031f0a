#!/usr/bin/env bash
# tests/cli/run_errors.sh -- `kiln run` on bad input: every case must exit 1 (not a crash: no
# exit >= 128, no sanitizer report), save nothing, and say what is wrong on stderr. Covers
# unreadable/non-JSON workflows, ComfyUI's validation errors (no outputs, unknown or missing
# class_type, bad links, type mismatches, values out of range or not in a list, cycles),
# execution errors (unsupported sampler, damaged checkpoints, missing tokenizer, bad images,
# unwritable output) and the u64 seed range.
# Usage: run_errors.sh KILN_BINARY SOURCE_DIR (as CTest calls it).
set -u
KILN=$(realpath "${1:?kiln binary}")
SRC=$(realpath "${2:?source dir}")
WF=$SRC/tests/data/workflows
BAD=$WF/errors
DIR=$(mktemp -d /tmp/kiln_cli_run_errors_XXXXXX)
trap 'rm -rf "$DIR"' EXIT
cd "$DIR" || exit 1
# see run.sh: OpenMP spin-waiting is very slow when CTest runs tests in parallel
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
fails=0
cases=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# run_kiln NAME ARGS...: runs `kiln run ARGS` (60 s at most, so a hang fails instead of blocking);
# sets rc; stdout/stderr in NAME.out/NAME.err; fails on any sanitizer report.
run_kiln() {
    local name=$1; shift
    cases=$((cases + 1))
    timeout 60 "$KILN" run "$@" >"$DIR/$name.out" 2>"$DIR/$name.err"
    rc=$?
    if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error|Segmentation|Aborted' "$DIR/$name.err"; then
        fail "$name: crash or sanitizer report:"
        head -n 40 "$DIR/$name.err"
    fi
    [ "$rc" = 124 ] && fail "$name: still running after 60 s (hang?)"
}

# expect_fail NAME 'SUBSTRING'... -- ARGS...: exit 1, nothing on stdout, every SUBSTRING on stderr.
expect_fail() {
    local name=$1; shift
    local subs=()
    while [ "$1" != -- ]; do subs+=("$1"); shift; done
    shift
    run_kiln "$name" "$@"
    if [ "$rc" != 1 ]; then
        fail "$name: exit $rc, expected 1; stderr: $(tail -n 5 "$DIR/$name.err")"
        return
    fi
    [ -s "$DIR/$name.out" ] && fail "$name: failed run printed saved files: $(cat "$DIR/$name.out")"
    local s
    for s in "${subs[@]}"; do
        grep -qF -- "$s" "$DIR/$name.err" || fail "$name: stderr lacks '$s': $(grep -v ' info ' "$DIR/$name.err" | head -n 6)"
    done
    # show the message (not the timestamped log line) that carries the last substring
    echo "ok: $name: $(grep -vE '^[0-9]{2}:[0-9]{2}:' "$DIR/$name.err" | grep -F -m 1 -- "${subs[-1]}" | cut -c 1-170)"
}

# variant NAME 'sed expressions': NAME.json, a copy of txt2img.json with edits (must change it).
variant() {
    sed -e "$2" "$WF/txt2img.json" >"$DIR/$1.json"
    cmp -s "$WF/txt2img.json" "$DIR/$1.json" && fail "variant $1: '$2' changed nothing"
}

# ckpt_variant NAME: a copy of txt2img.json that loads models/checkpoints/NAME.safetensors.
ckpt_variant() {
    variant "$1" "s/\"ckpt_name\": \"tiny.safetensors\"/\"ckpt_name\": \"$1.safetensors\"/"
}

t_start=$SECONDS
mkdir -p models/checkpoints input
CK=models/checkpoints
"$KILN" ckpt --tiny $CK/tiny.safetensors >/dev/null 2>&1 || {
    echo "FAIL: kiln ckpt --tiny failed"
    exit 1
}

# ---- the workflow file ----
expect_fail missing_file "cannot open workflow" "nothere.json" "No such file" -- nothere.json
expect_fail directory "cannot read workflow" "Is a directory" -- "$DIR"
expect_fail not_json "not valid JSON" "line 1" -- "$BAD/not_json.json"
: >empty.json
expect_fail empty_file "not valid JSON" -- empty.json
head -c 200 "$WF/txt2img.json" >cut.json
expect_fail cut_json "not valid JSON" "end of file" -- cut.json
printf '%0.s[' {1..5000} >deep.json
expect_fail deep_json "not valid JSON" "depth" -- deep.json
variant nan 's/"cfg": 7.5,/"cfg": NaN,/'
expect_fail nan "not valid JSON" "NaN" -- nan.json
expect_fail not_object "No prompt provided" -- "$BAD/not_object.json"
expect_fail prompt_not_object "prompt is not a JSON object" -- "$BAD/prompt_not_object.json"

# ---- validation (ComfyUI's messages) ----
expect_fail no_outputs "Prompt has no outputs" -- "$BAD/no_outputs.json"
expect_fail unknown_class "FancyUpscalerThatDoesNotExist does not exist" -- "$BAD/unknown_class.json"
expect_fail no_class_type "missing the class_type property" "'#2'" -- "$BAD/no_class_type.json"
expect_fail link_missing_node "node 2 (VAEDecode)" "samples" "'42'" "not in the prompt" -- "$BAD/link_missing_node.json"
expect_fail link_bad_index "node 3 (VAEDecode)" "output 3 of node '1'" "which has 3 outputs" -- "$BAD/link_bad_index.json"
expect_fail link_malformed "Bad linked input" "samples" -- "$BAD/link_malformed.json"
expect_fail wrong_type "Return type mismatch" "received_type(LATENT) mismatch input_type(CLIP)" -- "$BAD/wrong_type.json"
expect_fail missing_input "Required input is missing" "height" "filename_prefix" -- "$BAD/missing_input.json"
variant steps0 's/"steps": 3,/"steps": 0,/'
expect_fail steps0 "node 3 (KSampler)" "Value 0 smaller than min of 1: steps" -- steps0.json
variant cfg1000 's/"cfg": 7.5,/"cfg": 1000,/'
expect_fail cfg1000 "bigger than max of 100.0: cfg" -- cfg1000.json
variant width1 's/"width": 128,/"width": 1,/'
expect_fail width1 "node 5 (EmptyLatentImage)" "Value 1 smaller than min of 16: width" -- width1.json
variant seed_text 's/"seed": 42,/"seed": "abc",/'
expect_fail seed_text "Failed to convert an input value to a INT value: seed" -- seed_text.json
variant sampler_foo 's/"sampler_name": "euler"/"sampler_name": "foo"/'
expect_fail sampler_foo "Value not in list: sampler_name: 'foo'" -- sampler_foo.json
variant ckpt_missing 's/"ckpt_name": "tiny.safetensors"/"ckpt_name": "nothere.safetensors"/'
expect_fail ckpt_missing "Value not in list: ckpt_name: 'nothere.safetensors'" -- ckpt_missing.json
expect_fail cycle "Dependency cycle detected" "LatentUpscaleBy" -- "$BAD/cycle.json"
expect_fail cycle_self "Dependency cycle detected" "2 (LatentUpscaleBy) -> 2" -- "$BAD/cycle_self.json"
cp "$BAD/load_image.json" load_image.json
expect_fail image_missing "Invalid image file: picture.png" -- load_image.json

# ---- execution ----
# CheckpointLoaderPlaced (issue 7): a bad allocation string fails the node with the parser's words;
# a good one on a CPU device is accepted and ignored (host memory already)
variant placed_bad 's/"class_type": "CheckpointLoaderSimple",/"class_type": "CheckpointLoaderPlaced",/; s/"inputs": {"ckpt_name": "tiny.safetensors"}/"inputs": {"ckpt_name": "tiny.safetensors", "weights_placement": "cuda:0,8;cpu,*"}/'
expect_fail placed_bad "node 4 (CheckpointLoaderPlaced) failed" "entry 1 'cuda:0,8'" "give one, as in 8gb" -- placed_bad.json
variant placed_ok 's/"class_type": "CheckpointLoaderSimple",/"class_type": "CheckpointLoaderPlaced",/; s/"inputs": {"ckpt_name": "tiny.safetensors"}/"inputs": {"ckpt_name": "tiny.safetensors", "weights_placement": "cuda:0,25%;cpu,*", "prefetch": false}/'
run_kiln placed_ok placed_ok.json
[ "$rc" = 0 ] || { fail "placed_ok: exit $rc"; tail -n 5 "$DIR/placed_ok.err"; }
rm -f output/ComfyUI_*.png # later cases count the saved files from 1
variant sampler_sde 's/"sampler_name": "euler"/"sampler_name": "dpmpp_sde"/'
expect_fail sampler_sde "node 3 (KSampler) failed" "'dpmpp_sde' is not supported yet" -- sampler_sde.json

# damaged checkpoints: each message names the file
head -c 1000 $CK/tiny.safetensors >$CK/cut_header.safetensors
ckpt_variant cut_header
expect_fail cut_header "CheckpointLoaderSimple" "cut_header.safetensors" "past the end of the file" -- cut_header.json
size=$(stat -c %s $CK/tiny.safetensors)
head -c $((size / 2)) $CK/tiny.safetensors >$CK/cut_data.safetensors
ckpt_variant cut_data
expect_fail cut_data "cut_data.safetensors" "run past the data section" -- cut_data.json
head -c 5 $CK/tiny.safetensors >$CK/cut_len.safetensors
ckpt_variant cut_len
expect_fail cut_len "cut_len.safetensors" "too short" -- cut_len.json
cp $CK/tiny.safetensors $CK/garbage.safetensors
printf 'GARBAGE!GARBAGE!GARBAGE!GARBAGE!' | dd of=$CK/garbage.safetensors bs=1 seek=8 conv=notrunc 2>/dev/null
ckpt_variant garbage
expect_fail garbage "garbage.safetensors" "header is not valid JSON" -- garbage.json
cp $CK/tiny.safetensors $CK/huge_len.safetensors
printf '\377\377\377\377\377\377\377\177' | dd of=$CK/huge_len.safetensors bs=1 conv=notrunc 2>/dev/null
ckpt_variant huge_len
expect_fail huge_len "huge_len.safetensors" "header length" -- huge_len.json
# same-length header edits: a tensor renamed away, an unknown dtype, an integer dtype
sed 's/"model.diffusion_model.out.2.weight"/"model.diffusion_model.out.2.weighX"/' $CK/tiny.safetensors >$CK/no_key.safetensors
cmp -s $CK/tiny.safetensors $CK/no_key.safetensors && fail "no_key: the edit changed nothing"
ckpt_variant no_key
expect_fail no_key "no_key.safetensors" "model.diffusion_model." -- no_key.json
sed 's/"dtype":"F16","shape":\[4,32,3,3\]/"dtype":"F17","shape":[4,32,3,3]/' $CK/tiny.safetensors >$CK/bad_dtype.safetensors
cmp -s $CK/tiny.safetensors $CK/bad_dtype.safetensors && fail "bad_dtype: the edit changed nothing"
ckpt_variant bad_dtype
expect_fail bad_dtype "bad_dtype.safetensors" "unknown dtype" "F17" -- bad_dtype.json
sed 's/"dtype":"F16","shape":\[4,32,3,3\]/"dtype":"I16","shape":[4,32,3,3]/' $CK/tiny.safetensors >$CK/int_dtype.safetensors
cmp -s $CK/tiny.safetensors $CK/int_dtype.safetensors && fail "int_dtype: the edit changed nothing"
ckpt_variant int_dtype
expect_fail int_dtype "int_dtype.safetensors" "model.diffusion_model.out.2.weight" "unsupported dtype" -- int_dtype.json

# no tokenizer: a checkpoint alone in its folder, no --tokenizer, no models/tokenizers/clip-l
mkdir -p m2/checkpoints
cp $CK/tiny.safetensors m2/checkpoints/
expect_fail no_tokenizer "node 6 (CLIPTextEncode) failed" "vocab.json" "m2/checkpoints/" "m2/tokenizers/clip-l" \
    -- --models-dir m2 "$WF/txt2img.json"
expect_fail bad_tokenizer_dir "--tokenizer $DIR/nothere" "m2/tokenizers/clip-l" \
    -- --models-dir m2 --tokenizer "$DIR/nothere" "$WF/txt2img.json"

# images that are not PNGs (LoadImage)
echo "hello, this is a text file and not an image" >input/picture.png
expect_fail image_text "node 1 (LoadImage) failed" "picture.png" "invalid signature" "only PNG files" -- load_image.json
printf '\211PNG\r\n\032\n\0\0\0\rIHDR' >input/picture.png
expect_fail image_cut "node 1 (LoadImage) failed" "picture.png" "end of stream" -- load_image.json

# outputs that cannot be written
: >not_a_dir
expect_fail output_file "node 9 (SaveImage) failed" "not_a_dir/ComfyUI_00001_.png" -- --output-dir not_a_dir "$WF/txt2img.json"
variant escape 's/"filename_prefix": "ComfyUI"/"filename_prefix": "..\/..\/escape"/'
expect_fail escape "Saving image outside the output folder is not allowed" -- escape.json

# ---- the seed is a u64: 2^64-1 runs, 2^64 is out of range ----
variant seed_max 's/"seed": 42,/"seed": 18446744073709551615,/'
run_kiln seed_max seed_max.json
if [ "$rc" = 0 ]; then
    [ "$(cat seed_max.out)" = output/ComfyUI_00001_.png ] || fail "seed_max: stdout $(cat seed_max.out)"
    grep -aqF '"seed": 18446744073709551615,' output/ComfyUI_00001_.png || fail "seed_max: seed not in the prompt chunk"
    echo "ok: seed_max runs"
else
    fail "seed 18446744073709551615: exit $rc, expected 0: $(grep -v ' info ' seed_max.err | head -n 5)"
fi
variant seed_over 's/"seed": 42,/"seed": 18446744073709551616,/'
expect_fail seed_over "Value 18446744073709551616 bigger than max of 18446744073709551615: seed" -- seed_over.json
variant seed_neg 's/"seed": 42,/"seed": -1,/'
expect_fail seed_neg "Value -1 smaller than min of 0: seed" -- seed_neg.json

echo "run_errors.sh: $cases cases in $((SECONDS - t_start)) s"
if [ "$fails" -gt 0 ]; then
    echo "$fails failure(s)"
    exit 1
fi
echo "run_errors.sh: all checks passed"
