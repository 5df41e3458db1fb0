#!/usr/bin/env bash
# Keep a sweep's results where git can hold them: every run's config.toml, summary.json,
# metrics.jsonl and upcycle.json, the sweep's sweep.json and its report (report.md, results.*,
# plots/), without checkpoints or vocabularies (tens of MB a run). A sweep run again with --out on a
# copy of that folder skips the runs that finished (summary.json) and trains the rest, so a study can
# span sessions whose sweeps/ folder does not survive.
#   bash scripts/keep_sweep.sh sweeps/transformer docs/studies/transformer   # keep
#   bash scripts/keep_sweep.sh docs/studies/transformer sweeps/transformer   # resume from it
set -euo pipefail
if [[ $# -ne 2 || ! -f "$1/sweep.json" ]]; then
  echo "usage: keep_sweep.sh SWEEP_DIR DEST (SWEEP_DIR must hold sweep.json)" >&2
  exit 2
fi
src="$1" dest="$2"
dest="$(mkdir -p "$dest" && cd "$dest" && pwd)"
cd "$src"
# Only finished runs: a half-trained run's metrics without its checkpoint would only confuse a resume.
find . -name summary.json -printf '%h\n' | while read -r run; do
  for file in config.toml summary.json metrics.jsonl upcycle.json; do
    if [[ -f "$run/$file" ]]; then cp --parents -t "$dest" "$run/$file"; fi
  done
done
find . -maxdepth 1 \( -name sweep.json -o -name report.md -o -name 'results.*' \) -exec cp -t "$dest" {} +
if [[ -d plots ]]; then find plots -type f ! -name '*.log' -exec cp --parents -t "$dest" {} +; fi
echo "kept $(find . -name summary.json | wc -l) finished runs of $src in $dest"
