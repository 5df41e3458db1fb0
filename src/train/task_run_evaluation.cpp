#include "moelab/train/task_run_evaluation.h"

#include <filesystem>

#include "moelab/device/device.h"
#include "moelab/device/precision.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/run_dir.h"
#include "moelab/train/supervised_task.h"
#include "moelab/util/error.h"

namespace moelab {

nlohmann::json evaluate_task_run(const TaskRunEvaluationRequest& request) {
  const auto device = parse_device(request.device, "--device");
  const auto& directory = request.run_directory;
  if (!std::filesystem::is_directory(directory)) fail("run directory {} does not exist", directory);
  if (request.split != "valid" && request.split != "test") fail("--split must be valid or test, got '{}'", request.split);
  if (request.checkpoint != "best" && request.checkpoint != "last")
    fail("--checkpoint must be best or last, got '{}'", request.checkpoint);
  const RunPaths paths(directory);
  // best.pt is what train.select = best reports; a run stopped before its first evaluation has none.
  auto found = request.checkpoint == "best" ? find_checkpoint(paths.best_checkpoint) : std::nullopt;
  if (!found) found = find_checkpoint(paths.checkpoint);
  if (!found)
    fail("{} holds no checkpoint (checkpoint.pt); was the run trained with `moelab train --out {}`?", directory,
         directory);
  auto config = run_config_for_evaluation(*found, request.eval_settings);
  const auto task_name = config.get_string("model.task");
  if (task_name == "translation")
    fail("{} is a translation run: score it with `moelab translate --run {} --input SOURCE > OUT` and `moelab bleu`",
         directory, directory);
  if (task_name != "tagging" && task_name != "qa")
    fail("{} is a {} run; this evaluation is for tagging and QA runs", directory, task_name);
  if (!request.data_file.empty()) {
    if (!std::filesystem::is_regular_file(request.data_file)) fail("--data {}: no such file", request.data_file);
    config.set("data." + request.split, request.data_file);
  }
  if (config.get_string("data." + request.split).empty())
    fail("{} was trained without data.{}; name a file with --data", directory, request.split);

  // The saved vocabulary keeps the ids the weights were trained with (and skips any GloVe file).
  auto task = task_name == "tagging" ? make_tagging_task(config, found->meta.vocabulary_text)
                                     : make_qa_task(config, found->meta.vocabulary_text);
  auto& model = task->model();
  model.to(device);
  load_checkpoint(found->path, model, /*optimizer=*/nullptr, /*state=*/nullptr, /*restore_rng=*/false);
  model.eval();
  std::vector<RoutingStatsAccumulator> routing;
  nlohmann::json figures;
  {
    const LowerPrecisionScope lower(device, parse_precision(config.get_string("train.precision")));
    figures = task->evaluate(request.split, &routing);
  }
  nlohmann::json out = {{"task", task_name}, {"split", request.split}, {"checkpoint", found->path},
                        {"step", found->meta.step}};
  out.update(figures);
  if (!routing.empty()) out["moe"] = routing.front().to_json();
  return out;
}

}  // namespace moelab
