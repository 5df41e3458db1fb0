#include "moelab/bench/layer_bench.h"

#include <ATen/record_function.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <fstream>

#include "moelab/bench/module_loop_moe.h"
#include "moelab/bench/operator_profile.h"
#include "moelab/device/device.h"
#include "moelab/dispatch/grouped_path.h"
#include "moelab/layers/dense_ffn.h"
#include "moelab/util/error.h"

namespace moelab {

namespace {

// A GPU sample ends when its kernels have run, not when they were queued. Recorded as an operator,
// so that `bench --profile` shows the wait for the device apart from host code.
void synchronize(const torch::Device& device) {
  const std::vector<c10::IValue> no_inputs;
  RECORD_FUNCTION("moelab::synchronize", no_inputs);
  synchronize_device(device);
}

// Gradients set to none rather than zeroed, as the trainer does: the next backward then writes fresh
// buffers instead of adding into old ones.
void clear_gradients(torch::nn::Module& module, torch::Tensor& x) {
  module.zero_grad(/*set_to_none=*/true);
  x.mutable_grad().reset();
}

torch::Tensor bench_input(const LayerBenchOptions& options, int64_t tokens) {
  return torch::randn({tokens, options.dim}, torch::TensorOptions().device(options.device).dtype(options.dtype))
      .requires_grad_(true);
}

// One fwd+bwd sample of an MoE-shaped module (MoELayer or ModuleLoopMoE).
template <typename Layer>
std::function<void()> moe_sample(Layer& layer, torch::Tensor& x, const torch::Device& device) {
  return [&layer, &x, device] {
    auto out = layer->forward(x);
    (out.output.sum() + out.aux_loss).backward();
    synchronize(device);
    clear_gradients(*layer, x);
  };
}

std::function<void()> dense_sample(DenseFfn& dense, torch::Tensor& x, const torch::Device& device) {
  return [&dense, &x, device] {
    dense->forward(x).sum().backward();
    synchronize(device);
    clear_gradients(*dense, x);
  };
}

nlohmann::json row_head(const std::string& case_name, const MoELayerOptions& o, int64_t tokens) {
  return {{"case", case_name},       {"experts", o.num_experts()}, {"k", o.k()},
          {"bank", o.bank()},        {"router", o.router()},       {"tokens", tokens},
          {"dim", o.model_dim()},    {"expert_hidden", o.expert_hidden()}};
}

nlohmann::json row_head(const std::string& case_name, const MoELayerOptions& o, const LayerBenchOptions& options,
                        int64_t tokens) {
  auto row = row_head(case_name, o, tokens);
  row["device"] = options.device.str();
  row["dtype"] = options.dtype == torch::kBFloat16 ? "bf16" : "float32";
  return row;
}

}  // namespace

MoELayerOptions bench_layer_options(const LayerBenchOptions& options, int64_t experts, int64_t k,
                                    const std::string& bank) {
  auto o = MoELayerOptions(options.dim, experts, k, options.expert_hidden).bank(bank);
  o.rank(std::min({o.rank(), options.dim, options.expert_hidden}));  // the default 16, or less for tiny shapes
  if (bank == "mpo" || bank == "tensor_train") {
    // Three factors each way, (a, n / a^2, a), a the largest power of two with a^3 <= n and a^2 | n:
    // 512 = 8*8*8 and 1024 = 8*16*8 at the default shape.
    const auto factors = [](int64_t n) -> std::vector<int64_t> {
      int64_t a = 1;
      while ((2 * a) * (2 * a) * (2 * a) <= n && n % ((2 * a) * (2 * a)) == 0) a *= 2;
      return {a, n / (a * a), a};
    };
    o.model_factors(factors(options.dim)).hidden_factors(factors(options.expert_hidden));
  }
  return o;
}

int64_t dense_equal_flops_hidden(MoELayerImpl& layer) {
  const double flops = static_cast<double>(layer.experts->flops_per_token(layer.nominal_experts_per_token()));
  return std::max<int64_t>(1, std::llround(flops / (4.0 * static_cast<double>(layer.options.model_dim()))));
}

nlohmann::json bench_moe_vs_dense(const MoELayerOptions& layer_options, const LayerBenchOptions& options,
                                  const std::string& case_name) {
  torch::manual_seed(0);
  MoELayer layer(layer_options);
  layer->to(options.device, options.dtype);
  const int64_t dense_hidden = dense_equal_flops_hidden(*layer);
  DenseFfn dense(DenseFfnOptions(layer_options.model_dim(), dense_hidden));
  dense->to(options.device, options.dtype);
  auto x = bench_input(options, options.tokens);
  const auto ms = interleaved_median_ms({moe_sample(layer, x, options.device), dense_sample(dense, x, options.device)},
                                        options.timing);
  auto row = row_head(case_name, layer_options, options, options.tokens);
  row["dense_hidden"] = dense_hidden;
  row["ms"] = ms[0];
  row["dense_ms"] = ms[1];
  row["ratio_vs_dense"] = ms[0] / ms[1];
  row["tokens_per_s"] = static_cast<double>(options.tokens) / (ms[0] / 1e3);
  row["params_total"] = layer->params_total();
  // Forward + backward: three times the forward's expert FLOPs (two products per forward one).
  const double tokens = static_cast<double>(options.tokens);
  const double k = layer->nominal_experts_per_token();
  row["active_flops"] = 3.0 * static_cast<double>(layer->experts->flops_per_token(k)) * tokens;
  // The least one pass must move, counted for an FFN bank whose experts all receive rows: every
  // expert parameter read in the forward, read again in the backward and its gradient written
  // (3 x the bank); the M = N * k routed rows [M, D], their hidden activations [M, H] and output
  // rows [M, D] written and read once in the forward and twice in the backward (6 x M (2D + H)).
  const double element = static_cast<double>(torch::elementSize(options.dtype));
  const double d = static_cast<double>(layer_options.model_dim()), h = static_cast<double>(layer_options.expert_hidden());
  const double bytes = element * (3.0 * static_cast<double>(layer->bank_params_total()) + 6.0 * tokens * k * (2.0 * d + h));
  row["bytes_moved_mb"] = bytes / 1e6;
  if (!options.profile_path.empty()) {
    const auto profile = profile_operators(moe_sample(layer, x, options.device), /*repeats=*/3);
    append_operator_profile(options.profile_path,
                            fmt::format("{}: E = {}, k = {}, bank {}, {} on {}", case_name, layer_options.num_experts(),
                                        layer_options.k(), layer_options.bank(), row["dtype"].get<std::string>(),
                                        options.device.str()),
                            profile);
  }
  return row;
}

void add_roofline(nlohmann::json& row, const Roofline& roofline) {
  const double ms = row["ms"].get<double>();
  const double gflops = row["active_flops"].get<double>() / (ms * 1e6);
  row["gflops"] = gflops;
  row["sgemm_gflops"] = roofline.sgemm_gflops;
  row["fraction_of_sgemm"] = gflops / roofline.sgemm_gflops;
  row["copy_gbs"] = roofline.copy_gbs;
  row["ms_at_bandwidth"] = row["bytes_moved_mb"].get<double>() / roofline.copy_gbs;
}

std::vector<nlohmann::json> bench_slow_paths(const MoELayerOptions& layer_options, const LayerBenchOptions& options) {
  torch::manual_seed(0);
  MoELayer layer(layer_options);
  ModuleLoopMoE loop(layer_options);
  layer->to(options.device, options.dtype);
  loop->to(options.device, options.dtype);
  DenseFfn dense(DenseFfnOptions(layer_options.model_dim(), dense_equal_flops_hidden(*layer)));
  dense->to(options.device, options.dtype);
  auto x = bench_input(options, options.tokens);
  const GroupedPath before = grouped_path();
  const auto fast = moe_sample(layer, x, options.device);
  const auto naive = [&] {
    set_grouped_path(GroupedPath::kReference);
    fast();
    set_grouped_path(before);
  };
  const auto ms = interleaved_median_ms({fast, naive, moe_sample(loop, x, options.device),
                                         dense_sample(dense, x, options.device)},
                                        options.timing);
  std::vector<nlohmann::json> rows;
  for (auto [name, index] : {std::pair<const char*, int>{"naive", 1}, {"module_loop", 2}}) {
    auto row = row_head(name, layer_options, options, options.tokens);
    row["ms"] = ms[index];
    row["fast_ms"] = ms[0];
    row["dense_ms"] = ms[3];
    row["ratio_vs_dense"] = ms[index] / ms[3];
    row["ratio_vs_fast"] = ms[index] / ms[0];
    rows.push_back(row);
  }
  return rows;
}

std::vector<nlohmann::json> bench_weak_scaling(const std::vector<int64_t>& experts, int64_t k, int64_t slots_per_expert,
                                               int64_t hierarchical_from, const LayerBenchOptions& options) {
  std::vector<nlohmann::json> rows;
  double first_us = 0;
  for (const int64_t e : experts) {
    auto o = bench_layer_options(options, e, k);
    if (e >= hierarchical_from) {
      int64_t groups = 1;
      while (groups * groups < e) groups *= 2;
      o.router("hierarchical").groups(groups).group_k(1);
    }
    LayerBenchOptions scaled = options;
    scaled.tokens = slots_per_expert * e / k;
    // Rough float count of what one sample holds: expert weights and their gradients, the
    // dispatched rows through the expert (input, hidden before and after the activation, output)
    // with their gradients, and a few [N, D] tensors. Nothing is [N, E] (the hierarchical router
    // gates only the chosen groups), so this is linear in E; skip what this machine cannot hold
    // rather than be killed by the OOM killer.
    const double d = static_cast<double>(o.model_dim()), h = static_cast<double>(o.expert_hidden());
    const double n = static_cast<double>(scaled.tokens), slots = n * static_cast<double>(k);
    const double bytes = 4.0 * (2.0 * static_cast<double>(e) * 2.0 * d * h + 2.0 * slots * (2.0 * d + 2.0 * h) + 8.0 * n * d);
    const double memory_bytes = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
    if (bytes > 0.6 * memory_bytes) {
      nlohmann::json row = {{"case", "weak_scaling"}, {"experts", e},  {"k", k},         {"bank", o.bank()},
                            {"router", o.router()},   {"groups", o.groups()}, {"tokens", scaled.tokens},
                            {"ms", 0.0},              {"dense_ms", 0.0},      {"ratio_vs_dense", 0.0},
                            {"skipped", fmt::format("needs ~{:.0f} GB, over 60% of this machine's memory", bytes / 1e9)}};
      rows.push_back(row);
      continue;
    }
    auto row = bench_moe_vs_dense(o, scaled, "weak_scaling");
    const double us = row["ms"].get<double>() * 1e3 / static_cast<double>(scaled.tokens);
    if (rows.empty()) first_us = us;
    row["groups"] = o.groups();
    row["us_per_token"] = us;
    row["ratio_vs_first"] = us / first_us;
    rows.push_back(row);
  }
  return rows;
}

}  // namespace moelab
