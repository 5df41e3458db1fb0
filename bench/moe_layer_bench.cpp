// MoE layer vs a dense FFN of equal active FLOPs (hidden = k * expert_hidden), forward + backward,
// measured side by side in one process. Report the ratio of the two medians, e.g.
//   OPENBLAS_CORETYPE=... ./moelab_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// Shape legend: N tokens, D width, H expert hidden, E experts, K slots.
#include <benchmark/benchmark.h>

#include <thread>

#include "moelab/layers/dense_ffn.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/util/blas_env.h"

namespace {

constexpr int64_t kTokens = 2048;       // N: a batch of 32 x 64 positions
constexpr int64_t kWidth = 512;         // D
constexpr int64_t kExpertHidden = 1024;  // H

void set_threads() { at::set_num_threads(static_cast<int>(std::thread::hardware_concurrency())); }

void BM_MoELayer(benchmark::State& state) {
  set_threads();
  const int64_t experts = state.range(0), k = state.range(1);
  torch::manual_seed(0);
  moelab::MoELayer layer(moelab::MoELayerOptions(kWidth, experts, k, kExpertHidden));
  const auto x = torch::randn({kTokens, kWidth}).requires_grad_(true);
  for (auto _ : state) {
    auto out = layer(x);
    (out.output.sum() + out.aux_loss).backward();
    layer->zero_grad(/*set_to_none=*/true);
  }
  state.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(kTokens), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_DenseFfn(benchmark::State& state) {
  set_threads();
  const int64_t k = state.range(1);
  torch::manual_seed(0);
  moelab::DenseFfn layer(moelab::DenseFfnOptions(kWidth, k * kExpertHidden));
  const auto x = torch::randn({kTokens, kWidth}).requires_grad_(true);
  for (auto _ : state) {
    layer(x).sum().backward();
    layer->zero_grad(/*set_to_none=*/true);
  }
  state.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(kTokens), benchmark::Counter::kIsIterationInvariantRate);
}

void Cases(benchmark::internal::Benchmark* b) {
  for (int64_t experts : {8, 64})
    for (int64_t k : {1, 2, 4}) b->Args({experts, k});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_MoELayer)->Apply(Cases);
BENCHMARK(BM_DenseFfn)->Apply(Cases);

}  // namespace

int main(int argc, char** argv) {
  moelab::tune_process_environment(argc, argv);  // the CLI's fast BLAS kernels and malloc tuning
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
