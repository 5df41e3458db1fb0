#!/usr/bin/env bash
# README command 1: install what is missing, build in Release, export the embedded KJV corpus and
# train the default model (configs/kjv-moe.toml, about 5 minutes on 2 cores) into runs/kjv-moe.
# Extra arguments go to `moelab train` (e.g. --set train.steps=100).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
moelab_install_packages
moelab_build -DMOELAB_BUILD_BENCH=ON
cd "$MOELAB_ROOT"
"$MOELAB_BUILD/moelab" info --system
"$MOELAB_BUILD/moelab" data kjv --out data/kjv
run_dir="runs/kjv-moe"
if [[ -f "$run_dir/summary.json" ]]; then
  echo "moelab: $run_dir already finished; showing it (delete it, or use --force, to train again)"
  "$MOELAB_BUILD/moelab" info --run "$run_dir"
  cat "$run_dir/summary.json"
  exit 0
fi
resume=()
[[ -f "$run_dir/checkpoint.pt" || -f "$run_dir/checkpoint.pt.prev" ]] && resume=(--resume)
"$MOELAB_BUILD/moelab" train --config configs/kjv-moe.toml --set data.corpus=data/kjv --out "$run_dir" "${resume[@]}" "$@"
"$MOELAB_BUILD/moelab" info --run "$run_dir"
