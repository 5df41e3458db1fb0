#!/usr/bin/env bash
# Fails when a folder of the library includes a header from a folder above it. The order, bottom
# first (README, "Library layout"): a folder may include its own headers and those of any folder
# to its left.
#
#   util device comm types balance dispatch routing experts dist layers config data models train report bench
#
# apps/, tests/, fuzz/ and bench/ (the executables) sit above all of them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
layers=(util device comm types balance dispatch routing experts dist layers config data models train report bench)
declare -A rank
for i in "${!layers[@]}"; do rank[${layers[$i]}]=$i; done

status=0
checked=0
for folder in src include/moelab; do
  for dir in "$folder"/*/; do
    layer="$(basename "$dir")"
    [[ "$layer" == sentencepiece || "$layer" == cuda ]] && continue  # modules of their own, see below
    if [[ -z "${rank[$layer]+x}" ]]; then
      echo "check_layers: $dir is not in the layer order; add it to scripts/check_layers.sh and the README" >&2
      status=1
      continue
    fi
    while IFS=: read -r file line include; do
      target="$(sed -E 's|.*"moelab/([a-z_]+)/.*|\1|' <<<"$include")"
      checked=$((checked + 1))
      if [[ -z "${rank[$target]+x}" ]]; then
        echo "$file:$line: includes from unknown folder '$target'" >&2
        status=1
      elif ((rank[$target] > rank[$layer])); then
        echo "$file:$line: $layer includes $target, which sits above it ($(tr -d '\n' <<<"$include"))" >&2
        status=1
      fi
    done < <(grep -rnoE '#include "moelab/[a-z_]+/[^"]+"' "$dir" || true)
  done
done
# The CUDA sources and the SentencePiece module are leaves the library loads or links at its edge:
# they may include anything but nothing of the library may include them.
if grep -rnE '#include "moelab/(cuda|sentencepiece)/' src include 2>/dev/null; then
  echo "check_layers: nothing in the library may include src/cuda or src/sentencepiece headers" >&2
  status=1
fi
if ((status == 0)); then
  echo "check_layers: $checked includes in ${#layers[@]} layers, none upwards"
fi
exit $status
