// `moelab bench --dist`, run under a launcher (torchrun --no-python --nproc_per_node=W moelab bench
// --dist): training steps of the configured language model on each rank, with the communication
// measured where it happens. Per rank: step time, tokens/s, all-to-all volume and time, gradient
// all-reduce volume and time, and the expert computation (the local bank's forward and backward).
// The global batch is the config's train.batch at every W (strong scaling), as in training.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "moelab/config/config.h"
#include "moelab/comm/communicator.h"

namespace moelab {

struct DistBenchOptions {
  Config config;
  int64_t steps = 20;   // timed steps
  int64_t warmup = 3;   // untimed steps first (the grouped-product kernels are chosen then)
  int64_t vocab = 10000;  // random token ids: the speed does not depend on the text
};

// Collective. Returns every rank's figures (a list, rank order) plus the totals.
nlohmann::json run_dist_bench(const DistBenchOptions& options, const std::shared_ptr<Communicator>& communicator);

// Markdown table of run_dist_bench's result.
std::string dist_bench_markdown(const nlohmann::json& result);

}  // namespace moelab
