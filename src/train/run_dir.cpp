#include "moelab/train/run_dir.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>

#include "moelab/config/assignment.h"
#include "moelab/data/kjv_export.h"
#include "moelab/device/device.h"
#include "moelab/device/precision.h"
#include "moelab/data/text_corpus.h"
#include "moelab/models/model_from_config.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/run_session.h"
#include "moelab/util/error.h"

namespace moelab {

RunPaths::RunPaths(std::string dir)
    : directory(std::move(dir)),
      config(directory + "/config.toml"),
      metrics(directory + "/metrics.jsonl"),
      summary(directory + "/summary.json"),
      checkpoint(directory + "/checkpoint.pt"),
      vocabulary(directory + "/vocab.txt"),
      best_checkpoint(directory + "/best.pt"),
      best_record(directory + "/best.json") {}

const std::vector<std::string>& evaluation_setting_keys(const std::string& task) {
  static const std::vector<std::string> language_model = {"moe.eval_capacity_factor", "moe.capacity_drop",
                                                          "debug.window_routing_in_eval", "train.eval_batch"};
  // Tagging and QA evaluate in batches of train.batch, and their encoder has no window routing.
  static const std::vector<std::string> other = {"moe.eval_capacity_factor", "moe.capacity_drop"};
  return task == "lm" ? language_model : other;
}

FoundCheckpoint find_run_checkpoint(const std::string& directory, const std::string& which) {
  if (!std::filesystem::is_directory(directory)) fail("run directory {} does not exist", directory);
  if (which != "best" && which != "last") fail("--checkpoint must be best or last, got '{}'", which);
  const RunPaths paths(directory);
  // A run stopped before its first evaluation has no best.pt.
  auto found = which == "best" ? find_checkpoint(paths.best_checkpoint) : std::nullopt;
  if (!found) found = find_checkpoint(paths.checkpoint);
  if (!found)
    fail("{} holds no checkpoint (checkpoint.pt); was the run trained with `moelab train --out {}`?", directory,
         directory);
  return *found;
}

Config run_config_for_evaluation(const FoundCheckpoint& found, const std::vector<std::string>& eval_settings) {
  auto config = Config::from_toml_string(found.meta.config_toml, found.path + " (config)");
  // The run's thread count too: the grouped-path choice is cached per thread count, and the same
  // choice is what makes evaluation repeat training's figures bit for bit.
  apply_compute_settings(config);
  const auto& task = config.get_string("model.task");
  const auto& allowed = evaluation_setting_keys(task);
  const auto& language_model = evaluation_setting_keys("lm");
  auto listed = [](const std::vector<std::string>& keys, const std::string& key) {
    return std::find(keys.begin(), keys.end(), key) != keys.end();
  };
  for (const auto& assignment : eval_settings) {
    const auto key = split_assignment(assignment).key;
    if (!listed(allowed, key) && listed(language_model, key))
      fail("--set {}: has no effect on a tagging or QA run ({} do)", key, fmt::join(allowed, " and "));
    if (!listed(allowed, key))
      fail("--set {}: only settings that change evaluation can be overridden here ({}); the weights were "
           "trained with the rest",
           key, fmt::join(allowed, ", "));
    config.apply_override(assignment);
  }
  if (!eval_settings.empty()) config.validate();
  return config;
}

LoadedRun load_run(const std::string& directory, const std::string& device_name,
                   const std::vector<std::string>& eval_settings) {
  const auto device = parse_device(device_name, "--device");
  const RunPaths paths(directory);
  const auto found = find_run_checkpoint(directory, "last");
  const auto& meta = found.meta;
  LoadedRun run;
  run.config = run_config_for_evaluation(found, eval_settings);
  if (run.config.get_string("model.task") != "lm")
    fail("{} is a {} run; generate, routes and info work on language-model runs (eval also on tagging and QA "
         "runs; its validation and test figures are in {})",
         directory, run.config.get_string("model.task"), paths.summary);
  run.vocabulary = Vocabulary::from_text(meta.vocabulary_text);
  run.model = make_language_model(run.config, run.vocabulary.size());
  run.model->to(device);
  load_checkpoint(found.path, *run.model, /*optimizer=*/nullptr, /*state=*/nullptr, /*restore_rng=*/false);
  run.model->eval();
  run.step = meta.step;
  return run;
}

std::string corpus_directory(const Config& config) {
  const auto& corpus = config.get_string("data.corpus");
  if (corpus == "kjv") return ensure_kjv_corpus();
  return corpus;
}

EvalResult evaluate_run_split(LoadedRun& run, const std::string& split, const std::string& data_dir,
                              int64_t max_tokens, std::vector<RoutingStatsAccumulator>* routing) {
  const std::string dir = data_dir.empty() ? corpus_directory(run.config) : data_dir;
  const auto tokens = load_split(dir + "/" + split + ".txt", run.vocabulary);
  const LowerPrecisionScope lower(module_device(*run.model), parse_precision(run.config.get_string("train.precision")));
  return evaluate_language_model(*run.model, tokens, run.config.get_int("train.eval_batch"),
                                 language_model_window(run.config), max_tokens, routing);
}

}  // namespace moelab
