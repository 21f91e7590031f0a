#!/usr/bin/env bash
# tests/cli/layers.sh -- STYLE.md's mechanical rules, checked on the source tree:
#  1. arrows only point down: a layer includes only the layers below it (ARCHITECTURE.md);
#  2. no raw host allocation outside src/base/mem.c (everything goes through mem_*);
#  3. every source file opens with a comment saying what it owns.
# usage: layers.sh KILN_BINARY SOURCE_DIR (the binary is unused)
set -u
src="${2:?source dir}/src"
fail=0

allowed() { # layer -> the layers it may include (itself included)
  case "$1" in
    base)   echo "base" ;;
    tensor) echo "tensor base" ;;
    io)     echo "io base" ;;
    sample) echo "sample tensor base" ;;
    model)  echo "model tensor base" ;;
    vram)   echo "vram tensor base" ;;
    graph)  echo "graph model sample vram io tensor base" ;;
    sched)  echo "sched graph vram base" ;;
    api)    echo "api sched graph vram io base" ;;
    cli)    echo "cli api sched graph model sample vram io tensor base" ;;
    *)      echo "" ;;
  esac
}

while IFS= read -r f; do
  layer=$(echo "${f#"$src"/}" | cut -d/ -f1)
  ok=$(allowed "$layer")
  if [ -z "$ok" ]; then echo "unknown layer folder: $f"; fail=1; continue; fi
  while IFS= read -r inc; do
    dep=$(echo "$inc" | sed -E 's/#include "([a-z]+)\/.*/\1/')
    case " $ok " in *" $dep "*) ;; *) echo "layer rule: $f includes $inc ($layer may not include $dep)"; fail=1 ;; esac
  done < <(grep -E '^#include "[a-z]+/' "$f")
  if ! head -c 3 "$f" | grep -q '/\*'; then echo "no header comment: $f"; fail=1; fi
done < <(find "$src" -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

# raw allocation: only base/mem.c may call the C allocator
raw=$(grep -rnE '(^|[^_a-z])(malloc|calloc|realloc|aligned_alloc|strdup|strndup)\(|(^|[^_a-z.>])free\(' "$src" \
        --include=*.c --include=*.h | grep -v "^$src/base/mem.c:" | grep -vE '^\S+:\s*\*|/\*.*(malloc|free)')
if [ -n "$raw" ]; then echo "raw allocation outside base/mem.c:"; echo "$raw"; fail=1; fi

if [ "$fail" -eq 0 ]; then echo "layers: ok"; fi
exit "$fail"
