#!/usr/bin/env bash
# Fuzzes every reader of outside input (fuzz/fuzz_*.cpp) with libFuzzer under ASan + UBSan:
# config + --set, text corpus + vocabulary, CoNLL, GloVe, SQuAD, translation pairs, study files
# and checkpoints.
#
#   scripts/fuzz.sh [SECONDS=60] [TARGET ...]      e.g. scripts/fuzz.sh 600   or   scripts/fuzz.sh 30 glove
#
# Builds with clang in build-asan/ (MOELAB_TORCH=sanitize: MOELAB_FUZZ=ON), seeds each target from fuzz/seeds/, the shipped
# configs and studies, and the head of ../shared/data's files where present, then runs each target for
# SECONDS. Crashes land in build-asan/crashes/TARGET/; the script fails when any target crashed.
# Copy a crash into tests/fixtures/fuzz/TARGET/ once it is fixed: the test suite replays them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
seconds="${1:-60}"
shift || true
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS] [TARGET ...]" >&2; exit 2; }
targets=("$@")
if ((${#targets[@]} == 0)); then
  for source in "$MOELAB_ROOT"/fuzz/fuzz_*.cpp; do targets+=("$(basename "$source" .cpp | sed 's/^fuzz_//')"); done
fi
# The sanitizer build of README command 2 (build-asan/), which includes the fuzz targets.
moelab_select_torch sanitize
moelab_install_packages
moelab_build
build="$MOELAB_BUILD"
cd "$MOELAB_ROOT"

shared="$MOELAB_ROOT/../shared/data"
head_of() { [[ -f "$1" ]] && head -c "${2:-4000}" "$1" || true; }
seed_corpus() {
  local target="$1" dir="$build/corpus/$1"
  mkdir -p "$dir"
  cp fuzz/seeds/"$target"/* "$dir"/ 2>/dev/null || true
  case "$target" in
    config)
      for f in configs/*.toml; do cp "$f" "$dir/$(basename "$f")"; done ;;
    study)
      for f in configs/studies/*.toml; do cp "$f" "$dir/$(basename "$f")"; done ;;
    conll)
      head_of "$shared/conll2003/valid.txt" >"$dir/shared_valid.txt" ;;
    squad)
      # The first article of the dev set, closed so that it parses.
      if [[ -f "$shared/squad/dev-v1.1.json" ]]; then
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["data"]=d["data"][:1]; d["data"][0]["paragraphs"]=d["data"][0]["paragraphs"][:2]; print(json.dumps(d))' \
          "$shared/squad/dev-v1.1.json" >"$dir/shared_dev.json"
      fi ;;
    parallel_text)
      if [[ -f "$shared/multi30k/val.de" ]]; then
        { head -20 "$shared/multi30k/val.de"; printf '\0'; head -20 "$shared/multi30k/val.en"; } >"$dir/shared_val.txt"
      fi ;;
    text_corpus)
      if [[ -f "$shared/wikitext-2/valid.txt" ]]; then
        { head -c 3000 "$shared/wikitext-2/train.txt"; printf '\0'; head -c 800 "$shared/wikitext-2/valid.txt"; printf '\0'
          head -c 800 "$shared/wikitext-2/test.txt"; } >"$dir/shared_wt2.txt"
      fi ;;
    checkpoint)
      MOELAB_FUZZ_WRITE_SEED="$dir/valid.pt" "$build/fuzz/fuzz_checkpoint" -runs=0 "$dir" >/dev/null 2>&1 || true ;;
  esac
  echo "$dir"
}

status=0
summary=()
for target in "${targets[@]}"; do
  corpus="$(seed_corpus "$target")"
  crashes="$build/crashes/$target"
  mkdir -p "$crashes"
  log="$build/fuzz_$target.log"
  echo "moelab fuzz: $target for ${seconds} s (corpus $corpus)"
  # -rss_limit_mb: a reader may legitimately hold a few hundred MB; more is a finding.
  if ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    "$build/fuzz/fuzz_$target" "$corpus" -max_total_time="$seconds" -max_len=65536 -timeout=20 -rss_limit_mb=4096 \
    -artifact_prefix="$crashes/" -print_final_stats=1 >"$log" 2>&1; then
    result="ok"
  else
    result="CRASH (see $log and $crashes)"
    status=1
    grep -m3 -E 'ERROR|runtime error|terminate|SUMMARY' "$log" || true
  fi
  runs=$(grep -m1 -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || echo "?")
  summary+=("$(printf '%-14s %-8s %10s executions  coverage %6s edges' "$target" "$result" "$runs" "$cov")")
done
echo "moelab fuzz: ${seconds} s per target"
printf '  %s\n' "${summary[@]}"
exit $status
