#!/usr/bin/env bash
# Every GPU check of moelab in one call, for a machine with an NVIDIA GPU and a CUDA PyTorch but no
# package registry (the device machine of our tool library, or any such workstation):
#
#   bash scripts/gpu-check.sh --prepare      # here, with the Debian packages: fills .gpu/ (about 8 MB)
#   bash scripts/gpu-check.sh [OUT_DIR]      # there: build, test, bench, train; results in OUT_DIR
#
# --prepare copies what the GPU machine lacks: the header-only libraries (CLI11, toml++, nlohmann-json,
# spdlog, fmt), Gloo's headers, GoogleTest's sources and the exported KJV corpus. The check then
#   1. builds moelab against that machine's PyTorch (its LibTorch, CUDA, NCCL) with the tests,
#   2. runs the CUDA tests, then the whole suite (CUDA tests enabled: a GPU is visible),
#   3. runs `moelab bench --device cuda` layer rows in float32 and in bf16 (JSON),
#   4. trains 200 steps of configs/kjv-moe.toml on the GPU, and of configs/kjv-transformer-switch.toml
#      in float32 and in bf16 (train.precision),
# and writes everything under OUT_DIR (default $OUT, else gpu-check-out/): at most 8 files, so the
# device tool brings all of them back. Sized for 10 minutes on an H100-class machine with 16 cores.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPU_DIR="$ROOT/.gpu"

prepare() {
  set -e
  source "$ROOT/scripts/common.sh"
  moelab_install_packages
  rm -rf "$GPU_DIR/deps"
  mkdir -p "$GPU_DIR/deps/include" "$GPU_DIR/kjv"
  for d in CLI toml++ nlohmann spdlog fmt gloo; do cp -r "/usr/include/$d" "$GPU_DIR/deps/include/"; done
  cp -r /usr/src/googletest "$GPU_DIR/deps/googletest"
  # The corpus comes from Debian's bible-kjv package, which the GPU machine does not have.
  moelab_build
  "$MOELAB_BUILD/moelab" data kjv --out "$GPU_DIR/kjv" >/dev/null
  # Git must not see .gpu/ (the device tool carries it when asked to).
  grep -qx '/.gpu/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.gpu/' >>"$ROOT/.git/info/exclude"
  echo "moelab: $GPU_DIR ready ($(du -sh "$GPU_DIR" | cut -f1)); carry .gpu with: bash scripts/gpu-check.sh"
}

if [[ "${1:-}" == --prepare ]]; then
  prepare
  exit
fi

OUT_DIR="${1:-${OUT:-$ROOT/gpu-check-out}}"
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu-check.md"
BUILD="${MOELAB_GPU_BUILD:-/tmp/moelab-gpu-build}"
started=$SECONDS
say() { echo "$*" | tee -a "$REPORT"; }
step() { say ""; say "## $1 (at $((SECONDS - started)) s)"; }
: >"$REPORT"

[[ -d "$GPU_DIR/deps" ]] || { echo "moelab: error: $GPU_DIR/deps is missing: run 'bash scripts/gpu-check.sh --prepare' where the Debian packages are, and carry .gpu" >&2; exit 1; }
PYTHON="${PYTHON:-python3}"
torch_prefix="$("$PYTHON" -c 'import torch, os; print(os.path.dirname(torch.__file__))')" ||
  { echo "moelab: error: $PYTHON cannot import torch" >&2; exit 1; }
say "# moelab GPU check"
say ""
say "- $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
say "- PyTorch $("$PYTHON" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)') at $torch_prefix"
say "- $(nproc) cores, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"

step "Build"
jobs="$(nproc)"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
{
  cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DMOELAB_BUILD_TESTS=ON \
    -DMOELAB_BUILD_BENCH=OFF -DCMAKE_PREFIX_PATH="$torch_prefix" -DMOELAB_DEPS_DIR="$GPU_DIR/deps" \
    -DTORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" &&
    cmake --build "$BUILD" -j"$jobs"
} >"$OUT_DIR/build.log" 2>&1
build_status=$?
say "build exit $build_status after $((SECONDS - started)) s; $(grep -c 'warning:' "$OUT_DIR/build.log") warnings (build.log)"
if ((build_status != 0)); then
  grep -m 20 -E 'error|Error' "$OUT_DIR/build.log" | tee -a "$REPORT"
  exit 1
fi
"$BUILD/moelab" info --system 2>&1 | head -3 | sed 's/^/    /' | tee -a "$REPORT"

step "Tests"
(cd "$BUILD" && ctest -R 'Cuda|Gpu' --output-on-failure --timeout 300) >"$OUT_DIR/tests.log" 2>&1
say "CUDA tests: $(grep -E 'tests passed|tests failed' "$OUT_DIR/tests.log" | tail -1)"
(cd "$BUILD" && timeout "${MOELAB_GPU_TEST_SECONDS:-240}" ctest -j"$((jobs / 2))" --output-on-failure --timeout 200) \
  >>"$OUT_DIR/tests.log" 2>&1
say "whole suite: $(grep -E 'tests passed|tests failed' "$OUT_DIR/tests.log" | tail -1) (tests.log)"
grep -E '^\s+[0-9]+ - .*\((Failed|Timeout|Subprocess)' "$OUT_DIR/tests.log" | head -20 | tee -a "$REPORT"

step "Bench: MoE layer vs dense FFN on the GPU"
for dtype in float32 bf16; do
  "$BUILD/moelab" bench --device cuda --dtype "$dtype" --only layer --samples 20 --warmup 3 \
    --json "$OUT_DIR/bench-$dtype.json" >"$OUT_DIR/bench-$dtype.md" 2>&1
  say "### $dtype (exit $?)"
  grep -E '^\||^# |^LibTorch|^layer' "$OUT_DIR/bench-$dtype.md" >>"$REPORT"
  rm -f "$OUT_DIR/bench-$dtype.md"
done

step "Training on the GPU, 200 steps"
train() {
  local name="$1" config="$2"
  shift 2
  local run="/tmp/moelab-gpu-runs/$name"
  rm -rf "$run"
  "$BUILD/moelab" train --config "$config" --out "$run" --quiet --set train.device=cuda --set train.steps=200 \
    --set train.checkpoint_every=200 "$@" >"/tmp/moelab-gpu-$name.log" 2>&1
  local status=$?
  if ((status == 0)); then
    "$PYTHON" - "$run/summary.json" "$name" <<'PY' | tee -a "$REPORT"
import json, sys
s = json.load(open(sys.argv[1]))
print(f"- {sys.argv[2]}: valid ppl {s.get('valid_ppl', float('nan')):.2f}, {s['tokens_per_s']:.0f} tokens/s, "
      f"{s['train_seconds']:.1f} s, params {s['params_total']:,} ({s['params_active_per_token']:,} active), "
      f"{s.get('precision', 'float32')}, {s['libtorch']}")
PY
    cp "$run/summary.json" "$OUT_DIR/$name-summary.json"
  else
    say "- $name: exit $status: $(tail -1 "/tmp/moelab-gpu-$name.log")"
  fi
}
train kjv-moe "$ROOT/configs/kjv-moe.toml" --set data.corpus="$GPU_DIR/kjv"
transformer="$ROOT/configs/kjv-transformer-switch.toml"
if [[ -f "$transformer" ]]; then
  train transformer-moe "$transformer" --set data.corpus="$GPU_DIR/kjv"
  # Selective precision on a GPU with native bf16: the speed figure the CPU machines cannot give.
  train transformer-moe-bf16 "$transformer" --set data.corpus="$GPU_DIR/kjv" --set train.precision=bf16
  rm -f "$OUT_DIR/transformer-moe-bf16-summary.json"  # its line is in the report; keeps OUT_DIR small
else
  say "- Transformer-MoE: skipped, no configs/kjv-transformer-switch.toml in this commit"
fi
say ""
say "done in $((SECONDS - started)) s"
