// Layer-level rows of `moelab bench`: the MoE layer's forward + backward against a dense FFN of equal
// active FLOPs, against the naive path and a per-expert module loop, and weak scaling in E. Every
// row is a JSON object with at least case, experts, k, bank, ms, dense_ms, ratio_vs_dense.
//
// Shape legend: N tokens, D width, H expert hidden, E experts, k experts per token.
#pragma once
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <string>

#include "moelab/bench/timing.h"
#include "moelab/layers/moe_layer.h"

namespace moelab {

struct LayerBenchOptions {
  int64_t tokens = 2048;  // N: a batch of 32 x 64 positions
  int64_t dim = 512;      // D
  int64_t expert_hidden = 1024;
  TimingOptions timing;
  torch::Device device = torch::kCPU;
  torch::Dtype dtype = torch::kFloat;  // of the layers' weights and the input (float32 or bf16)
  // When set, each MoE-vs-dense row also profiles a few MoE samples operator by operator and appends
  // the table to this file (see operator_profile.h).
  std::string profile_path;
};

// MoELayerOptions for a bench row: ffn bank shape defaults plus what `bank` needs (factors for mpo
// and tensor_train: 512 = 8*8*8, 1024 = 8*16*8 at the default shape).
MoELayerOptions bench_layer_options(const LayerBenchOptions& options, int64_t experts, int64_t k,
                                    const std::string& bank = "ffn");

// Hidden width of the dense FFN with the same expert FLOPs per token as `layer` (k experts' worth).
int64_t dense_equal_flops_hidden(MoELayerImpl& layer);

// The machine's two limits, measured once per bench run, that the layer rows are read against.
struct Roofline {
  double sgemm_gflops = 0;  // float32 square product, 2048^3
  double copy_gbs = 0;      // large copy, bytes read + written per second
};
// Adds to a layer row: the experts' GFLOP/s in the fwd+bwd pass ("gflops"; the router's products
// are timed but not counted, as in the 12 d h per token-slot), its fraction of the sgemm
// rate (float32, also for bf16 rows), and how long the bytes the pass must move at least
// ("bytes_moved_mb", see layer_bench.cpp) take at the copy bandwidth ("ms_at_bandwidth").
void add_roofline(nlohmann::json& row, const Roofline& roofline);

// case "layer" (or "bank" when comparing banks): MoE fwd+bwd vs the dense FFN, sampled alternately.
nlohmann::json bench_moe_vs_dense(const MoELayerOptions& layer_options, const LayerBenchOptions& options,
                                  const std::string& case_name);

// Two rows, case "naive" (the layer on the reference grouped path) and "module_loop" (ModuleLoopMoE),
// each with fast_ms (the grouped layer) and ratio_vs_fast, sampled in turn with the dense FFN.
std::vector<nlohmann::json> bench_slow_paths(const MoELayerOptions& layer_options, const LayerBenchOptions& options);

// case "weak_scaling": N = slots_per_expert * E / k tokens, so each expert sees the same work
// whatever E; hierarchical routing (G = about sqrt(E) groups) from `hierarchical_from` experts up.
// us_per_token and ratio_vs_first (time per token relative to the first E listed).
std::vector<nlohmann::json> bench_weak_scaling(const std::vector<int64_t>& experts, int64_t k, int64_t slots_per_expert,
                                               int64_t hierarchical_from, const LayerBenchOptions& options);

}  // namespace moelab
