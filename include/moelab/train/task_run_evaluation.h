// A trained tagging or QA run evaluated again on one split, with the figures its training reports
// (token accuracy and entity F1; EM and F1): what `moelab eval` does for these tasks.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace moelab {

struct TaskRunEvaluationRequest {
  std::string run_directory;
  std::string split = "valid";      // "valid" or "test"
  std::string checkpoint = "best";  // "best": best.pt (checkpoint.pt when there is none); "last"
  std::string data_file;            // replaces the run's data.<split> file when not empty
  std::string device = "cpu";
  std::vector<std::string> eval_settings;  // KEY=VALUE, evaluation_setting_keys(task) only
};

// {"task", "split", "checkpoint" (the file), "step", "<split>_<figure>"..., "moe" (routing
// statistics of the MoE layer, when there is one)}. Throws Error (one line) for a directory without
// such a run, an unknown split or checkpoint choice, or a split the run has no data for.
nlohmann::json evaluate_task_run(const TaskRunEvaluationRequest& request);

}  // namespace moelab
