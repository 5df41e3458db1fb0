#!/usr/bin/env bash
# kill -9 soak: trains a small LSTM-MoE run and kills it with SIGKILL N times at random instants
# (during start-up, training, evaluation and while a checkpoint is being written), resuming after
# each kill. After every kill the run directory must still load (`moelab info --run`), and once
# the run is through, its training losses, evaluations and final perplexities must equal those of
# an uninterrupted run of the same config bit for bit.
#
#   scripts/soak.sh [N=20] [STEPS=120]      SOAK_SEED=... fixes the kill instants
#
# Uses $MOELAB_EXECUTABLE, else the existing build ($MOELAB_BUILD/moelab), building it when missing.
# The test suite runs a short one (Soak.ThreeKills: 3 kills, 40 steps).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kills_wanted="${1:-20}"
steps="${2:-120}"
if ! [[ "$kills_wanted" =~ ^[0-9]+$ && "$steps" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/soak.sh [N kills] [STEPS]" >&2
  exit 2
fi
moelab="${MOELAB_EXECUTABLE:-$MOELAB_BUILD/moelab}"  # the test suite passes its own build's
if [[ ! -x "$moelab" ]]; then
  moelab_install_packages
  moelab_build
fi
seed="${SOAK_SEED:-$(date +%s)}"
RANDOM=$((seed % 32768))
work="$(mktemp -d "${TMPDIR:-/tmp}/moelab-soak.XXXXXX")"
[[ -n "${SOAK_KEEP:-}" ]] || trap 'rm -rf "$work"' EXIT
echo "moelab soak: $kills_wanted kills, $steps steps, SOAK_SEED=$seed, in $work"

# A made corpus (no download, no KJV export): sentences from a small grammar, fixed by an LCG.
python3 - "$work/corpus" <<'EOF'
import os, sys
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
words = ("the lord said unto him and he was in the land of my sons house went came king day god they "
         "it people city water fire name heart hand word son").split()
state = 12345
def draw(n):
    global state
    state = (state * 1103515245 + 12345) % 2**31
    return state % n
for split, lines in (("train", 3000), ("valid", 200), ("test", 200)):
    with open(f"{out}/{split}.txt", "w") as f:
        for _ in range(lines):
            f.write(" ".join(words[draw(len(words))] for _ in range(4 + draw(9))) + "\n")
EOF

# Dropout and noisy top-k draw random numbers, so the generator state must survive the kills; a
# checkpoint every 2 steps puts many kills inside a checkpoint write. The grouped products run on
# `auto` with a cache of the soak's own: the paths round differently in the last bits, so every
# resumed process must take the choices the first one measured (README, "Grouped expert products"),
# and kills land while the cache is locked or written too. SOAK_FLAGS adds --set flags.
flags=(--quiet --set "data.corpus=$work/corpus" --set model.embed=48 --set model.hidden=48 --set model.dropout=0.1
  --set moe.experts=32 --set moe.k=2 --set moe.expert_hidden=256 --set train.batch=8 --set train.bptt=16
  --set "train.steps=$steps" --set train.threads=1 --set train.log_every=1 --set train.eval_every=25
  --set train.checkpoint_every=2 --set train.eval_max_tokens=2000 --set train.grouped_path=auto
  --set "train.grouped_path_cache=$work/grouped_paths.json" ${SOAK_FLAGS:-} --set train.optimizer=adam --set train.lr=0.003)

started=$(date +%s.%N)
"$moelab" train "${flags[@]}" --out "$work/reference" >"$work/reference.log" 2>&1 ||
  { cat "$work/reference.log" >&2; echo "moelab soak: FAIL: the uninterrupted run failed" >&2; exit 1; }
reference_ms=$(python3 -c "import sys; print(int(1000 * ($(date +%s.%N) - $started)))")
echo "moelab soak: uninterrupted run took ${reference_ms} ms"

# The figures that must agree: every metrics line without its timing fields, and the summary's
# perplexities. (Wall times differ from run to run by nature.)
figures() {
  python3 - "$1" <<'EOF'
import json, sys
run = sys.argv[1]
timing = {"tokens_per_s", "train_seconds", "eval_us_per_token", "epoch_seconds", "tokens_trained_this_session"}
for line in open(f"{run}/metrics.jsonl"):
    record = json.loads(line)
    print(json.dumps({k: v for k, v in record.items() if k not in timing}, sort_keys=True))
summary = json.load(open(f"{run}/summary.json"))
print(json.dumps({k: summary[k] for k in ("valid_ppl", "test_ppl", "steps")}, sort_keys=True))
EOF
}
figures "$work/reference" >"$work/reference.figures"

run="$work/killed"
kills=0 during_write=0 before_first=0 restarts=0 attempts=0
while ((kills < kills_wanted)); do
  attempts=$((attempts + 1))
  if ((attempts > 10 * kills_wanted + 10)); then
    echo "moelab soak: FAIL: $attempts attempts for $kills kills" >&2
    exit 1
  fi
  mode=(--force)
  [[ -d "$run" ]] && mode=(--resume)
  "$moelab" train "${flags[@]}" --out "$run" "${mode[@]}" >>"$work/killed.log" 2>&1 &
  pid=$!
  # A random instant in the first 1.2x of an uninterrupted run's time.
  delay_ms=$(((RANDOM * 32768 + RANDOM) % (reference_ms * 6 / 5 + 1)))
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    kills=$((kills + 1))
    if compgen -G "$run/checkpoint.pt.tmp.*" >/dev/null || compgen -G "$run/checkpoint.pt.prev.tmp.*" >/dev/null; then
      during_write=$((during_write + 1))
    fi
    if [[ -f "$run/checkpoint.pt" || -f "$run/checkpoint.pt.prev" ]]; then
      if ! "$moelab" info --run "$run" >"$work/info.log" 2>&1; then
        cat "$work/info.log" >&2
        echo "moelab soak: FAIL: after kill $kills (at ${delay_ms} ms) the run directory does not load" >&2
        exit 1
      fi
      # The newest checkpoint itself must read: falling back to .prev would hide a torn write.
      if grep -q "using the previous checkpoint" "$work/info.log"; then
        cat "$work/info.log" >&2
        echo "moelab soak: FAIL: after kill $kills (at ${delay_ms} ms) the newest checkpoint does not read" >&2
        exit 1
      fi
    else
      before_first=$((before_first + 1))
    fi
  else
    # The run finished before the kill: it must agree with the reference, then it starts over.
    wait "$pid" || { tail -5 "$work/killed.log" >&2; echo "moelab soak: FAIL: a resumed run failed" >&2; exit 1; }
    figures "$run" >"$work/killed.figures"
    if ! cmp -s "$work/reference.figures" "$work/killed.figures"; then
      diff "$work/reference.figures" "$work/killed.figures" | head -20 >&2
      echo "moelab soak: FAIL: a run finished after $kills kills differs from the uninterrupted run" >&2
      exit 1
    fi
    restarts=$((restarts + 1))
    rm -rf "$run"
  fi
done
# Through to the end after the last kill.
if [[ -d "$run" ]]; then
  "$moelab" train "${flags[@]}" --out "$run" --resume >>"$work/killed.log" 2>&1 ||
    { tail -5 "$work/killed.log" >&2; echo "moelab soak: FAIL: the last resume failed" >&2; exit 1; }
  figures "$run" >"$work/killed.figures"
  if ! cmp -s "$work/reference.figures" "$work/killed.figures"; then
    diff "$work/reference.figures" "$work/killed.figures" | head -20 >&2
    echo "moelab soak: FAIL: the resumed run differs from the uninterrupted run" >&2
    exit 1
  fi
fi
echo "moelab soak: PASS: $kills kills ($during_write while a checkpoint was being written, $before_first before the" \
  "first checkpoint), $restarts runs completed between kills; every run directory loaded, and the final figures" \
  "($(wc -l <"$work/reference.figures") lines) equal the uninterrupted run's bit for bit"
