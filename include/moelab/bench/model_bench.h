// Whole-model rows of `moelab bench`: a training step of a config's language model, LSTM or
// Transformer, in its train.precision (tokens/s and
// model GFLOP/s as a fraction of the sgemm GFLOP/s measured in the same run), evaluation tokens/s,
// and peak resident memory against what the model's tensors account for.
#pragma once
#include <nlohmann/json.hpp>

#include "moelab/bench/timing.h"
#include "moelab/config/config.h"

namespace moelab {

// The keys every whole-model row starts with: case, arch, precision, experts, k, bank, router of
// `config`, and dense_ms = ratio_vs_dense = 0 (the keys every bench row has).
nlohmann::json model_row(const std::string& case_name, const Config& config);

// Model GFLOP/s of training at `tokens_per_s`: about three times the forward's multiply-adds
// (forward, and two products per weight in backward).
double training_gflops(int64_t flops_per_token, double tokens_per_s);

// Rows "<prefix>train_step" and "<prefix>eval" (with case, arch, precision, experts, k, bank, ms, dense_ms = 0, ratio_vs_dense = 0
// so every row has the common keys). `sgemm_size`: the square product that sets the reference rate.
// Run these before the layer rows: peak RSS is a process-wide high-water mark. `profile_path`: when
// set, three training steps are also profiled operator by operator and appended there.
std::vector<nlohmann::json> bench_language_model(const Config& config, const TimingOptions& timing,
                                                 int64_t sgemm_size = 2048, const std::string& case_prefix = "",
                                                 const std::string& profile_path = "");

}  // namespace moelab
