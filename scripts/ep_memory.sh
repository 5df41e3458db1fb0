#!/usr/bin/env bash
# Issue 22 item 4: peak resident memory per rank under expert parallelism. Trains the embedded
# corpus's LSTM-MoE with E = 4096 (and E = 8 as the baseline without the expert part) on W = 1 and
# W = 2 ranks for a few steps with a checkpoint save, and prints each rank's peak RSS from
# summary.json. The expert part of a rank is its peak at E = 4096 minus its peak at E = 8; with
# every rank holding only its E/W experts (parameters, gradients, Adam state and checkpoint
# shards) the W = 2 figure should be about half the W = 1 one.
#   scripts/ep_memory.sh [EXPERTS] [OUT_DIR]      (MOELAB_EXECUTABLE: the binary, default build/moelab)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
moelab="${MOELAB_EXECUTABLE:-$root/build/moelab}"
experts="${1:-4096}"
out="${2:-$(mktemp -d)}"
mkdir -p "$out"
flags=(--quiet --set model.embed=64 --set model.hidden=64 --set moe.k=2 --set moe.expert_hidden=128
       --set train.batch=8 --set train.bptt=16 --set train.steps=4 --set train.checkpoint_every=2
       --set train.eval_max_tokens=512 --set train.threads=1 --set train.optimizer=adam
       --set moe.parallel=expert --set train.grouped_path=loop)

run() {  # run WORLD EXPERTS DIR
  local world=$1 e=$2 dir=$3 port=$((29500 + RANDOM % 1000)) pids=()
  for ((r = 0; r < world; ++r)); do
    RANK=$r WORLD_SIZE=$world LOCAL_RANK=$r LOCAL_WORLD_SIZE=$world MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "$moelab" train "${flags[@]}" --set moe.experts="$e" --out "$dir" --force > "$dir.rank$r.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { echo "ep_memory: a rank of $dir failed:"; cat "$dir".rank*.log; exit 1; }; done
}

peaks() {  # peaks DIR -> one MiB figure per rank
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1]+"/summary.json")); print(*[round(x) for x in s.get("peak_rss_mb_per_rank",[s["peak_rss_mb"]])])' "$1"
}

echo "ep_memory: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; E = $experts"
for world in 1 2; do
  run "$world" 8 "$out/w${world}-e8"
  run "$world" "$experts" "$out/w${world}-e${experts}"
  read -r -a base <<< "$(peaks "$out/w${world}-e8")"
  read -r -a big <<< "$(peaks "$out/w${world}-e${experts}")"
  for ((r = 0; r < world; ++r)); do
    echo "W=$world rank $r: peak RSS ${big[$r]} MiB at E=$experts, ${base[$r]} MiB at E=8: expert part $((big[r] - base[r])) MiB"
  done
  shards=$(ls "$out/w${world}-e${experts}" | grep -c '^checkpoint.pt.experts-' || true)
  echo "W=$world: $(du -m "$out/w${world}-e${experts}/checkpoint.pt" | cut -f1) MiB checkpoint.pt, $shards expert shard files"
done
