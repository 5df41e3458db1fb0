// The one training loop, for every task (language model, tagging, QA): data and model from the task
// (training_task.h), optimizer, schedule, logging, periodic evaluation and atomic checkpoints in a run
// directory (see run_dir.h), resumable after a kill, distributed over the launcher's processes.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "moelab/config/config.h"

namespace moelab {

struct TrainRequest {
  Config config;
  std::string out_dir;
  bool resume = false;  // continue from out_dir/checkpoint.pt; the config must match the run's
  bool force = false;   // overwrite a different run already in out_dir
  bool quiet = false;   // no progress output
  // For tests: return right after this step (and its checkpoint, if one is due), as if the
  // process were killed there. 0 = run to the end.
  int64_t stop_after_step = 0;
};

struct TrainResult {
  bool finished = false;  // false when stopped by stop_after_step or by a signal
  int64_t last_step = 0;
  nlohmann::json summary;  // what summary.json holds (empty when not finished)
  // SIGINT or SIGTERM when the run stopped because one arrived (util/stop_signal.h): the step in
  // progress was finished and checkpointed, and `--resume` continues from there. 0 otherwise.
  int stopped_by_signal = 0;
};

// Trains the task model.task names. Throws moelab::Error for bad input, and for a non-finite loss
// (after which the last good checkpoint is still in place).
TrainResult train_model(const TrainRequest& request);

}  // namespace moelab
