#include "moelab/bench/task_bench.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include "moelab/bench/model_bench.h"
#include "moelab/bench/operator_profile.h"
#include "moelab/device/precision.h"
#include "moelab/dispatch/grouped_path.h"
#include "moelab/models/layer_cost.h"
#include "moelab/train/distributed_run.h"
#include "moelab/train/optimizer_factory.h"
#include "moelab/train/training_task.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"
#include "moelab/util/parameter_count.h"

namespace moelab {

std::vector<nlohmann::json> bench_task_training(const Config& config, const TimingOptions& timing, int64_t sgemm_size,
                                                const std::string& profile_path) {
  set_grouped_path(parse_grouped_path(config.get_string("train.grouped_path")));
  const double sgemm = sgemm_gflops(sgemm_size, timing);

  const torch::Device cpu(torch::kCPU);
  const DistributedRun run(config);
  if (run.world_size() > 1) fail("the task row measures one process; run moelab bench without a launcher");
  torch::manual_seed(static_cast<uint64_t>(config.get_int("train.seed")));
  auto task = make_training_task({config, cpu, run, std::nullopt, ""});
  auto& model = task->model();
  const auto moe_layers = task->moe_layers();
  auto optimizer = make_optimizer(config, model.parameters(), moe_layers);
  const auto precision = parse_precision(config.get_string("train.precision"));
  const double clip = config.get_float("train.clip");
  const auto seed = static_cast<uint64_t>(config.get_int("train.seed"));
  const auto task_summary = task->summary_fields();
  // Translation states its FLOPs per source-or-target token, the tokens its batches count; every
  // other task's tokens are those its costs are per.
  const int64_t flops_per_token =
      task_summary.contains("flops_per_source_target_token")
          ? static_cast<int64_t>(task_summary["flops_per_source_target_token"].get<double>())
          : total_cost(task->costs()).flops;

  int64_t step = 0, tokens = 0;
  const auto train_step = [&] {
    ++step;
    model.zero_grad(/*set_to_none=*/true);  // as the trainer does
    for (const auto& layer : moe_layers) layer.layer.ptr()->start_step(1);
    StepForward out;
    {
      const LowerPrecisionScope lower(cpu, precision);
      out = task->forward(StepSlice{step, 0, 1});
    }
    (out.loss + out.aux_loss).backward();
    task->mask_gradients(seed, step);
    if (clip > 0) torch::nn::utils::clip_grad_norm_(model.parameters(), clip);
    optimizer->step();
    tokens += out.tokens;
  };
  model.train();
  for (int i = 0; i < timing.warmup; ++i) train_step();
  tokens = 0;  // of the timed steps only
  const auto ms = sampled_ms(train_step, TimingOptions{/*warmup=*/0, timing.samples});
  double total_ms = 0;
  for (const double m : ms) total_ms += m;
  const int64_t timed_tokens = tokens;  // the profiled steps below train on more batches
  const double tokens_per_s = static_cast<double>(timed_tokens) / (total_ms / 1e3);
  const double model_gflops = training_gflops(flops_per_token, tokens_per_s);
  if (!profile_path.empty())
    append_operator_profile(profile_path,
                            fmt::format("task_train_step: {} {} ({}, {})", config.get_string("model.task"),
                                        config.get_string("model.arch"), config.get_string("moe.layer"),
                                        config.get_string("train.precision")),
                            profile_operators(train_step, /*repeats=*/3));

  auto row = model_row("task_train_step", config);
  row.update({{"task", config.get_string("model.task")},
              {"ms", median(ms)},
              {"tokens_per_step", static_cast<double>(timed_tokens) / static_cast<double>(ms.size())},
              {"tokens_per_s", tokens_per_s},
              {"flops_per_token", flops_per_token},
              {"model_gflops", model_gflops},
              {"sgemm_gflops", sgemm},
              {"fraction_of_sgemm", model_gflops / sgemm},
              {"params_total", count_parameters(model)},
              {"peak_rss_mb", peak_rss_mb()}});
  return {row};
}

}  // namespace moelab
