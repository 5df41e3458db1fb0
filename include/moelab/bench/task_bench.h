// A training step of any task (language model, tagging, span QA, translation) timed through the
// one training loop's task interface, as `moelab train` runs it: forward and loss of a batch,
// backward, clipping, the optimizer. The language-model rows (model_bench.h) know each model's
// shapes; this row knows only what every task tells the loop, so it measures every task alike.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "moelab/bench/timing.h"
#include "moelab/config/config.h"

namespace moelab {

// Row "task_train_step": median ms per step, tokens/s over the timed steps (token-budget batches
// differ in size, so the rate is total tokens over total time, not a median), model GFLOP/s and its
// fraction of the sgemm rate measured in the same run. Translation counts source and target tokens
// and the FLOPs per such token. `profile_path`: three more steps profiled operator by operator and
// appended there.
std::vector<nlohmann::json> bench_task_training(const Config& config, const TimingOptions& timing,
                                                int64_t sgemm_size = 2048, const std::string& profile_path = "");

}  // namespace moelab
