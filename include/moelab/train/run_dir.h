// The run directory contract (README, "Run directory"): config.toml (resolved), metrics.jsonl (one JSON
// object per logged step), summary.json (final figures), checkpoint.pt (atomic), vocab.txt.
#pragma once
#include <string>
#include <vector>

#include "moelab/config/config.h"
#include "moelab/data/vocabulary.h"
#include "moelab/models/language_model.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/evaluate.h"

namespace moelab {

struct RunPaths {
  explicit RunPaths(std::string directory);
  std::string directory;
  std::string config;      // config.toml
  std::string metrics;     // metrics.jsonl
  std::string summary;     // summary.json
  std::string checkpoint;  // checkpoint.pt
  std::string vocabulary;  // vocab.txt
  // Tasks with a selection figure (translation: valid_bleu): the checkpoint with its best value so
  // far, and {"step", "figure", "value"} of it.
  std::string best_checkpoint;  // best.pt
  std::string best_record;      // best.json
};

// A trained run, ready for eval/generate/info. Loads the newest checkpoint; throws Error when the
// directory holds no run or the checkpoint is unreadable.
struct LoadedRun {
  Config config;
  Vocabulary vocabulary;
  LanguageModelPtr model;  // the backbone model.arch names
  int64_t step = 0;
};
// `device_name`: "cpu", "cuda" or "cuda:N" (whatever device wrote the checkpoint).
// `eval_settings`: KEY=VALUE overrides of the settings that change evaluation only (see
// evaluation_setting_keys("lm")), e.g. a reduced moe.eval_capacity_factor; anything else is refused.
LoadedRun load_run(const std::string& directory, const std::string& device_name = "cpu",
                   const std::vector<std::string>& eval_settings = {});
// The settings a trained run of model.task `task` may change for evaluation.
const std::vector<std::string>& evaluation_setting_keys(const std::string& task);
// The checkpoint a trained run is read from: "last" (checkpoint.pt) or "best" (best.pt, the best
// validation figure; checkpoint.pt when there is none). Error (one line) for a missing directory,
// another choice, or a directory without a checkpoint.
FoundCheckpoint find_run_checkpoint(const std::string& directory, const std::string& which);
// A checkpoint's training config with `eval_settings` (evaluation_setting_keys of its task only)
// applied, and this process's threads and grouped-path settings set from it.
Config run_config_for_evaluation(const FoundCheckpoint& found, const std::vector<std::string>& eval_settings);

// A trained run evaluated on `split` ("valid" or "test") of its corpus, or of data_dir when given;
// max_tokens > 0 evaluates a prefix. The CLI's eval and routes commands share it.
EvalResult evaluate_run_split(LoadedRun& run, const std::string& split, const std::string& data_dir,
                              int64_t max_tokens, std::vector<RoutingStatsAccumulator>* routing);

// Resolves data.corpus to a directory ("kjv" exports the embedded corpus on first use).
std::string corpus_directory(const Config& config);

}  // namespace moelab
