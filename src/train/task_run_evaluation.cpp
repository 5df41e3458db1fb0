#include "moelab/train/task_run_evaluation.h"

#include <filesystem>

#include "moelab/device/device.h"
#include "moelab/device/precision.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/run_dir.h"
#include "moelab/train/supervised_task.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab {

nlohmann::json evaluate_task_run(const TaskRunEvaluationRequest& request) {
  const auto device = parse_device(request.device, "--device");
  const auto& directory = request.run_directory;
  if (request.split != "valid" && request.split != "test") fail("--split must be valid or test, got '{}'", request.split);
  // best.pt is what train.select = best reports.
  const auto found = find_run_checkpoint(directory, request.checkpoint);
  const RunPaths paths(directory);
  auto config = run_config_for_evaluation(found, request.eval_settings);
  const auto task_name = config.get_string("model.task");
  if (task_name == "translation")
    fail("{} is a translation run: score it with `moelab translate --run {} --input SOURCE > OUT` and `moelab bleu`",
         directory, directory);
  if (task_name != "tagging" && task_name != "qa")
    fail("{} is a {} run; this evaluation is for tagging and QA runs", directory, task_name);
  if (!request.data_file.empty()) {
    if (!std::filesystem::is_regular_file(request.data_file))
      fail("--data {}: no such file (a tagging or QA run takes the CoNLL or SQuAD file that replaces data.{})",
           request.data_file, request.split);
    config.set("data." + request.split, request.data_file);
  }
  if (config.get_string("data." + request.split).empty())
    fail("{} was trained without data.{}; name a file with --data", directory, request.split);

  // The saved vocabulary keeps the ids the weights were trained with (and skips any GloVe file).
  auto task = task_name == "tagging" ? make_tagging_task(config, found.meta.vocabulary_text)
                                     : make_qa_task(config, found.meta.vocabulary_text);
  // The output layer's rows are the tags of data.train as read now: a changed training file would
  // silently permute them.
  if (std::filesystem::is_regular_file(paths.summary)) {
    const auto summary = nlohmann::json::parse(read_text_file(paths.summary), nullptr, /*allow_exceptions=*/false);
    const auto now = task->data_summary();
    if (summary.is_object() && summary.contains("data") && summary["data"].contains("tags") && now.contains("tags") &&
        summary["data"]["tags"] != now["tags"])
      fail("{} now holds the tags {}, not the {} the run was trained with (summary.json)", config.get_string("data.train"),
           now["tags"].dump(), summary["data"]["tags"].dump());
  }
  auto& model = task->model();
  model.to(device);
  load_checkpoint(found.path, model, /*optimizer=*/nullptr, /*state=*/nullptr, /*restore_rng=*/false);
  model.eval();
  std::vector<RoutingStatsAccumulator> routing;
  nlohmann::json figures;
  {
    const LowerPrecisionScope lower(device, parse_precision(config.get_string("train.precision")));
    figures = task->evaluate(request.split, &routing);
  }
  nlohmann::json out = {{"task", task_name}, {"split", request.split}, {"checkpoint", found.path},
                        {"step", found.meta.step}};
  out.update(figures);
  // The split's data figures (sentences or questions, tokens, unknown tokens, items dropped).
  out["data"] = task->data_summary().value(request.split, nlohmann::json::object());
  if (!routing.empty()) out["moe"] = routing.front().to_json();
  return out;
}

}  // namespace moelab
