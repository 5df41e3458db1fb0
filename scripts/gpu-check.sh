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
#   2. runs the CUDA tests,
#   3. runs `moelab bench --device cuda` layer rows in float32 and in bf16 (JSON),
#   4. trains 200 steps of configs/kjv-moe.toml on the GPU, and of configs/kjv-transformer-switch.toml
#      in float32 and in bf16 (train.precision),
#   5. runs the whole suite (CUDA tests enabled: a GPU is visible) in the time that is left,
#   6. only when MOELAB_GPU_STEPS names `study`: runs of configs/studies/$MOELAB_GPU_STUDY.toml
#      (transformer, the default, or translation) on the GPU (MOELAB_GPU_STUDY_VARIANTS,
#      MOELAB_GPU_STUDY_SEEDS, MOELAB_GPU_STUDY_JOBS side by side) and returns them without
#      checkpoints in study.tar.gz, to unpack into sweeps/$MOELAB_GPU_STUDY here
#      (a second call on the still-warm machine gives it the whole budget: MOELAB_GPU_STEPS=study
#      MOELAB_GPU_REUSE_BUILD=1 MOELAB_GPU_SECONDS=580; killed runs are lost with the machine),
# and writes everything under OUT_DIR (default $OUT, else gpu-check-out/): at most 8 files, so the
# device tool brings all of them back. Every step ends inside MOELAB_GPU_SECONDS (540 s) from the
# start, under the device tool's 10 minutes on an H100-class machine with 16 cores.
# MOELAB_GPU_REUSE_BUILD=1 with MOELAB_GPU_BUILD=<folder> skips the build (a dry run of the rest);
# MOELAB_GPU_STEPS="cuda_tests bench train suite" chooses the steps after it.
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
  # The studies' corpora (step `study`: ~17 MB), where this checkout has them.
  for corpus in wikitext-2 multi30k; do
    if [[ -d "$ROOT/../shared/data/$corpus" ]]; then
      rm -rf "$GPU_DIR/$corpus"
      cp -r "$ROOT/../shared/data/$corpus" "$GPU_DIR/$corpus"
    fi
  done
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
# The device tool stops a command at 10 minutes and keeps only what is under OUT_DIR by then: every
# step gets what is left of this budget (and at most its own cap), so a slow or hung step costs the
# steps after it their time, never the report.
BUDGET="${MOELAB_GPU_SECONDS:-540}"
# MOELAB_GPU_STEPS picks steps (a second call after a fix need not repeat what passed); the build
# always runs. MOELAB_GPU_DTYPES and MOELAB_GPU_SAMPLES shape the bench.
STEPS=" ${MOELAB_GPU_STEPS:-cuda_tests bench train suite} "
wanted() { [[ "$STEPS" == *" $1 "* ]]; }
started=$SECONDS
say() { echo "$*" | tee -a "$REPORT"; }
step() { say ""; say "## $1 (at $((SECONDS - started)) s)"; }
# Seconds the next step may take: its cap, or what is left of the budget when that is less.
left() {
  local rest=$((BUDGET - (SECONDS - started)))
  ((rest < $1)) && echo $((rest > 1 ? rest : 1)) || echo "$1"
}
: >"$REPORT"

[[ -d "$GPU_DIR/deps" ]] || { echo "moelab: error: $GPU_DIR/deps is missing: run 'bash scripts/gpu-check.sh --prepare' where the Debian packages are, and carry .gpu" >&2; exit 1; }
PYTHON="${PYTHON:-python3}"
torch_prefix="$("$PYTHON" -c 'import torch, os; print(os.path.dirname(torch.__file__))')" ||
  { echo "moelab: error: $PYTHON cannot import torch" >&2; exit 1; }
# CMake finds the CUDA toolkit through nvcc; images often keep it off the PATH.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
say "# moelab GPU check"
say ""
say "- $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
say "- PyTorch $("$PYTHON" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)') at $torch_prefix"
# The device tool copies the working tree over a .git of its own (older): "-dirty" marks that.
say "- $(nproc) cores, commit $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "?"); $(g++ --version | head -1); $(cmake --version | head -1); nvcc $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'not found')"

step "Build"
jobs="$(nproc)"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [[ "${MOELAB_GPU_REUSE_BUILD:-0}" == 1 && -x "$BUILD/moelab" ]]; then
  echo "reusing the build in $BUILD as it is (MOELAB_GPU_REUSE_BUILD=1)" >"$OUT_DIR/build.log"
else {
  cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DMOELAB_BUILD_TESTS=ON \
    -DMOELAB_BUILD_BENCH=OFF -DCMAKE_PREFIX_PATH="$torch_prefix" -DMOELAB_DEPS_DIR="$GPU_DIR/deps" \
    -DTORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" &&
    timeout "$(left 330)" cmake --build "$BUILD" -j"$jobs"
} >"$OUT_DIR/build.log" 2>&1
fi
build_status=$?
say "build exit $build_status after $((SECONDS - started)) s; $(grep -c 'warning:' "$OUT_DIR/build.log") warnings (build.log)"
grep -E '^-- moelab' "$OUT_DIR/build.log" | sed 's/^/    /' | tee -a "$REPORT"
if ((build_status != 0)); then
  grep -m 20 -E 'error|Error' "$OUT_DIR/build.log" | tee -a "$REPORT"
  exit 1
fi
# The filesystem line: which copy of libstdc++'s std::filesystem moelab calls (util/libstdcxx_binding.h).
"$BUILD/moelab" info --system 2>&1 | grep -E '^(build|moelab commit|CUDA devices|filesystem|moelab: error)' | sed 's/^/    /' | tee -a "$REPORT"

# The first test in LOG that crashed, and where it crashed: the library order and bindings that
# decide which copy of libstdc++'s functions a test calls (PyPI's LibTorch exports its own), and a
# backtrace from cuda-gdb (the GPU machines have it and no gdb). Once per check.
diagnosed=0
diagnose_crash() {
  local log="$1" test
  ((diagnosed == 0)) || return 0
  test="$(grep -m1 -E '\*\*\*Exception|Subprocess aborted' "$log" | sed -nE 's/.*Test +#[0-9]+: ([^ ]+) .*/\1/p')"
  [[ -n "$test" ]] || return 0
  diagnosed=1
  local exe="$BUILD/tests/moelab_tests" demangle=cat
  command -v c++filt >/dev/null && demangle=c++filt
  say ""
  say "### Why $test crashed"
  say "- LD_PRELOAD='${LD_PRELOAD:-}' LD_LIBRARY_PATH='${LD_LIBRARY_PATH:-}'"
  say "- needed, in order: $(readelf -d "$exe" 2>/dev/null | grep -oE 'NEEDED.*\[[^]]+\]' | sed -E 's/.*\[(.*)\]/\1/' | head -5 | tr '\n' ' ')"
  ldd "$exe" 2>/dev/null | grep -E 'stdc\+\+|libtorch\.so|libc10\.so|malloc' | sed 's/^/    /' | tee -a "$REPORT"
  rm -f /tmp/moelab-bindings.*
  # Where ctest runs it, so that relative paths resolve alike.
  (cd "$BUILD/tests" && LD_DEBUG=bindings LD_DEBUG_OUTPUT=/tmp/moelab-bindings timeout "$(left 30)" "$exe" \
    --gtest_filter="$test" >/dev/null 2>&1)
  say "- where the test's own std::filesystem and iostream references bound:"
  cat /tmp/moelab-bindings.* 2>/dev/null | grep -E "binding file $exe " | $demangle |
    grep -E 'filesystem|ios_base_library_init|basic_ofstream|basic_filebuf' | sed -E 's/^ *[0-9]+: *//' | sort -u | head -12 |
    sed 's/^/    /' | tee -a "$REPORT"
  if command -v cuda-gdb >/dev/null; then
    say "- backtrace (cuda-gdb):"
    (cd "$BUILD/tests" && timeout "$(left 60)" cuda-gdb -batch -ex run -ex bt --args "$exe" --gtest_filter="$test" 2>&1) |
      grep -E '^#[0-9]+' | head -20 | sed 's/^/    /' | tee -a "$REPORT"
  fi
}

if wanted cuda_tests; then
step "CUDA tests"
(cd "$BUILD" && timeout "$(left 120)" ctest -R 'Cuda|Gpu' -j4 --output-on-failure --timeout 110) >"$OUT_DIR/tests.log" 2>&1
say "CUDA tests: $(grep -E 'tests passed|tests failed' "$OUT_DIR/tests.log" | tail -1)"
grep -E '^\s*[0-9]+/[0-9]+ Test' "$OUT_DIR/tests.log" | sed 's/^/    /' | tee -a "$REPORT"
diagnose_crash "$OUT_DIR/tests.log"
fi

if wanted bench; then
step "Bench: MoE layer vs dense FFN on the GPU"
for dtype in ${MOELAB_GPU_DTYPES:-float32 bf16}; do
  samples="${MOELAB_GPU_SAMPLES:-20}"
  timeout "$(left 75)" "$BUILD/moelab" bench --device cuda --dtype "$dtype" --only layer --samples "$samples" \
    --warmup 3 --json "$OUT_DIR/bench-$dtype.json" >"$OUT_DIR/bench-$dtype.md" 2>/tmp/moelab-gpu-bench.err
  status=$?
  say "### $dtype (exit $status)"
  grep -E '^\||^# |^LibTorch|^layer' "$OUT_DIR/bench-$dtype.md" >>"$REPORT"
  # The error goes to stderr, which is not buffered behind the table.
  tail -n 5 /tmp/moelab-gpu-bench.err | tee -a "$REPORT"
  rm -f "$OUT_DIR/bench-$dtype.md"
done
# Where the MoE layer's time goes on the GPU, operator by operator (host time: long operators wait for
# the device), for the quick rows; into the report, which stays one file.
for dtype in ${MOELAB_GPU_PROFILE_DTYPES:-bf16}; do
  rm -f /tmp/moelab-gpu-profile.md  # a failed run must not report the last one's tables
  timeout "$(left 60)" "$BUILD/moelab" bench --device cuda --dtype "$dtype" --quick --only layer --samples 3 \
    --warmup 2 --profile /tmp/moelab-gpu-profile.md >/dev/null 2>/tmp/moelab-gpu-bench.err
  status=$?
  say "### operator profile, $dtype (exit $status)"
  ((status == 0)) || tail -n 3 /tmp/moelab-gpu-bench.err | tee -a "$REPORT"
  cat /tmp/moelab-gpu-profile.md >>"$REPORT" 2>/dev/null
done
fi

train() {
  local name="$1" config="$2"
  shift 2
  local run="/tmp/moelab-gpu-runs/$name"
  rm -rf "$run"
  timeout "$(left 75)" "$BUILD/moelab" train --config "$config" --out "$run" --quiet --set train.device=cuda \
    --set train.steps=200 --set train.checkpoint_every=200 "$@" >"/tmp/moelab-gpu-$name.log" 2>&1
  local status=$?
  { echo "### $name (exit $status)"; tail -n 30 "/tmp/moelab-gpu-$name.log"; } >>"$OUT_DIR/train.log"
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
if wanted train; then
step "Training on the GPU, 200 steps"
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
fi

# Last, with what is left: the whole suite with the CUDA tests enabled (the GPU is visible).
if wanted suite; then
step "Whole suite"
suite_log=/tmp/moelab-gpu-suite.log
# ctest gives each test one OpenMP thread (tests/CMakeLists.txt), so one test per core. 90 s stay
# for diagnosing a crash afterwards.
suite_seconds=$(($(left 400) - 90))
((suite_seconds > 1)) || suite_seconds=1
(cd "$BUILD" && timeout "$suite_seconds" ctest -j"$jobs" --output-on-failure --timeout 200) >"$suite_log" 2>&1
status=$?
summary="$(grep -E 'tests passed|tests failed' "$suite_log" | tail -1)"
# Stopped at the budget, ctest prints no summary: count what finished.
[[ -n "$summary" ]] || summary="stopped at the budget: $(grep -c ' Passed ' "$suite_log") passed, $(grep -cE '\*\*\*(Failed|Timeout|Exception)' "$suite_log") failed or crashed, $(grep -c 'Skipped ' "$suite_log") skipped so far"
say "whole suite (exit $status): $summary (tests.log)"
grep -E '^\s+[0-9]+ - .*\((Failed|Timeout|SEGFAULT|Subprocess aborted|[A-Z]+)\)|\*\*\*(Failed|Timeout|Exception)' "$suite_log" |
  head -20 | tee -a "$REPORT"
{ echo; echo "# whole suite"; cat "$suite_log"; } >>"$OUT_DIR/tests.log"
diagnose_crash "$suite_log"
fi
# A study where CPUs would take hours (issue 17's WikiText-2 Transformers, issue 18's Multi30k
# translation): several runs side by side (runs of this size are host-bound on a GPU), on the
# corpus paths its configs name, so that the run folders can join a sweep folder made elsewhere;
# checkpoints stay behind.
if wanted study; then
study="${MOELAB_GPU_STUDY:-transformer}"
step "Study $study"
study_dir="/tmp/moelab-gpu-study-$study"
for corpus in wikitext-2 multi30k; do
  link="$ROOT/../shared/data/$corpus"
  if [[ ! -d "$link" && -d "$GPU_DIR/$corpus" ]]; then
    mkdir -p "$(dirname "$link")" 2>/dev/null && ln -s "$GPU_DIR/$corpus" "$link" 2>/dev/null
  fi
done
if [[ ! -f "$ROOT/configs/studies/$study.toml" ]]; then
  say "- skipped: no configs/studies/$study.toml"
elif ! (cd "$ROOT" && "$BUILD/moelab" sweep --study "configs/studies/$study.toml" --out "$study_dir" --dry-run >/dev/null 2>"$OUT_DIR/study.log"); then
  say "- skipped: $(tail -1 "$OUT_DIR/study.log") (run --prepare where ../shared/data has the corpora, and carry .gpu)"
else
  (cd "$ROOT" && timeout "$(left 900)" "$BUILD/moelab" sweep --study "configs/studies/$study.toml" \
    --seeds "${MOELAB_GPU_STUDY_SEEDS:-3}" ${MOELAB_GPU_STUDY_VARIANTS:+--variants "$MOELAB_GPU_STUDY_VARIANTS"} \
    --set train.device=cuda --jobs "${MOELAB_GPU_STUDY_JOBS:-8}" --out "$study_dir") >"$OUT_DIR/study.log" 2>&1
  say "sweep exit $?: $(grep -c ' finished in ' "$OUT_DIR/study.log") runs finished, $(grep -c 'FAILED' "$OUT_DIR/study.log") failed (study.log)"
  grep -E 'finished in|FAILED' "$OUT_DIR/study.log" | sed 's/^sweep: /    /' | tee -a "$REPORT"
  # The GPU sweep's manifest travels as sweep-gpu.json, so that unpacking keeps the one here.
  tar czf "$OUT_DIR/study.tar.gz" -C "$study_dir" --exclude='*.pt' --exclude='*.pt.*' \
    --transform='s|^\./sweep\.json$|./sweep-gpu.json|' . 2>/dev/null
fi
fi
say ""
say "done in $((SECONDS - started)) s"
