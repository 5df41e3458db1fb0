#include "moelab/bench/dist_bench.h"

#include <fmt/format.h>
#include <torch/optim/adam.h>

#include <chrono>

#include "moelab/train/gradient_sync.h"
#include "moelab/models/model_from_config.h"
#include "moelab/util/error.h"

namespace moelab {

namespace {

using Clock = std::chrono::steady_clock;

// Field order of one rank's figures as they travel in the all-gather.
const std::vector<std::string>& figure_names() {
  static const std::vector<std::string> names = {
      "step_ms",           "tokens_per_s",          "all_to_all_mb_per_step", "all_to_all_ms_per_step",
      "all_reduce_mb_per_step", "all_reduce_ms_per_step", "all_gather_ms_per_step", "expert_forward_ms_per_step",
      "expert_backward_ms_per_step"};
  return names;
}

}  // namespace

nlohmann::json run_dist_bench(const DistBenchOptions& options, const std::shared_ptr<Communicator>& communicator) {
  const Config& config = options.config;
  config.validate();
  const int world = communicator->world_size();
  const int64_t batch = config.get_int("train.batch"), bptt = config.get_int("train.bptt");
  if (batch % world != 0) fail("train.batch = {} does not split evenly over {} ranks", batch, world);
  const int64_t columns = batch / world;
  const bool expert_parallel = config.get_string("moe.parallel") == "expert" && config.get_int("moe.experts") > 0;

  torch::manual_seed(static_cast<uint64_t>(config.get_int("train.seed")));
  auto model_options = language_model_options(config, options.vocab);
  // The exchange path at every W, W = 1 included, so its costs are measured the same way.
  if (expert_parallel && model_options.moe()) model_options.moe()->expert_group(communicator);
  LstmLanguageModel model(model_options);
  const auto placement = place_parameters(model->parameters(), model->moe_layers());
  GradientSync sync(communicator, placement.replicated, placement.expert_local);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  torch::manual_seed(static_cast<uint64_t>(config.get_int("train.seed")) + 1 + communicator->rank());
  const auto tokens = torch::randint(options.vocab, {bptt + 1, columns}, torch::kInt64);

  LstmState state;
  double seconds = 0;
  for (int64_t step = 0; step < options.warmup + options.steps; ++step) {
    if (step == options.warmup) {
      communicator->barrier();
      communicator->reset_tallies();
      if (model->moe && model->moe->exchange) model->moe->exchange->reset_compute_time();
      seconds = 0;
    }
    const auto started = Clock::now();
    auto out = model->forward(tokens.narrow(0, 0, bptt), state);
    auto loss = model->loss(out.features, tokens.narrow(0, 1, bptt)) + out.aux_loss;
    // Set to none: after a synchronisation the gradients are views of the all-reduce buckets,
    // which LibTorch's in-place zero_grad refuses.
    model->zero_grad(/*set_to_none=*/true);
    loss.backward();
    std::vector<double> means = {loss.item<double>()}, sums;
    sync.synchronize(means, sums);
    optimizer.step();
    state = out.state.detached();
    seconds += std::chrono::duration<double>(Clock::now() - started).count();
  }

  const double steps = static_cast<double>(options.steps);
  auto tally = [&](const char* kind) {
    const auto& all = communicator->tallies();
    const auto it = all.find(kind);
    return it == all.end() ? CollectiveTally{} : it->second;
  };
  ExpertComputeTime expert;
  if (model->moe && model->moe->exchange) expert = model->moe->exchange->compute_time();
  const std::vector<double> mine = {seconds / steps * 1e3,
                                    static_cast<double>(bptt * columns) * steps / seconds,
                                    static_cast<double>(tally("all_to_all").bytes_sent) / steps / 1e6,
                                    tally("all_to_all").seconds / steps * 1e3,
                                    static_cast<double>(tally("all_reduce").bytes_sent) / steps / 1e6,
                                    tally("all_reduce").seconds / steps * 1e3,
                                    tally("all_gather").seconds / steps * 1e3,
                                    expert.forward_seconds / steps * 1e3,
                                    expert.backward_seconds / steps * 1e3};
  const auto gathered = all_gather_cat(*communicator, torch::tensor(mine, torch::kFloat64), 0);
  nlohmann::json result = {{"ranks", world},
                           {"backend", communicator->backend()},
                           {"parallel", expert_parallel ? "expert" : "data"},
                           {"tokens_per_step", batch * bptt},
                           {"steps", options.steps},
                           {"threads_per_rank", at::get_num_threads()}};
  result["per_rank"] = nlohmann::json::array();
  double total_tokens_per_s = 0, slowest_step = 0;
  for (int r = 0; r < world; ++r) {
    nlohmann::json row = {{"rank", r}};
    for (size_t i = 0; i < figure_names().size(); ++i)
      row[figure_names()[i]] = gathered[r * static_cast<int64_t>(figure_names().size()) + static_cast<int64_t>(i)].item<double>();
    row["all_to_all_share"] = row["all_to_all_ms_per_step"].get<double>() / row["step_ms"].get<double>();
    total_tokens_per_s += row["tokens_per_s"].get<double>();
    slowest_step = std::max(slowest_step, row["step_ms"].get<double>());
    result["per_rank"].push_back(row);
  }
  // Ranks advance in lock step: the job's throughput is the global batch over the slowest step.
  result["tokens_per_s"] = static_cast<double>(batch * bptt) / (slowest_step / 1e3);
  result["sum_of_rank_tokens_per_s"] = total_tokens_per_s;
  return result;
}

std::string dist_bench_markdown(const nlohmann::json& r) {
  std::string out = fmt::format(
      "\n## Distributed training step: {} rank(s), {} backend, {} parallel, {} tokens per step, {} thread(s) per "
      "rank\n\n",
      r["ranks"].get<int>(), r["backend"].get<std::string>(), r["parallel"].get<std::string>(),
      r["tokens_per_step"].get<int64_t>(), r["threads_per_rank"].get<int>());
  out +=
      "| rank | step ms | tokens/s | all-to-all MB/step | all-to-all ms/step | all-to-all share | all-reduce MB/step "
      "| all-reduce ms/step | expert fwd ms | expert bwd ms |\n|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& row : r["per_rank"])
    out += fmt::format("| {} | {:.1f} | {:.0f} | {:.2f} | {:.2f} | {:.1f}% | {:.2f} | {:.2f} | {:.2f} | {:.2f} |\n",
                       row["rank"].get<int>(), row["step_ms"].get<double>(), row["tokens_per_s"].get<double>(),
                       row["all_to_all_mb_per_step"].get<double>(), row["all_to_all_ms_per_step"].get<double>(),
                       100 * row["all_to_all_share"].get<double>(), row["all_reduce_mb_per_step"].get<double>(),
                       row["all_reduce_ms_per_step"].get<double>(), row["expert_forward_ms_per_step"].get<double>(),
                       row["expert_backward_ms_per_step"].get<double>());
  out += fmt::format("\njob throughput: {:.0f} tokens/s (global batch / slowest rank's step)\n",
                     r["tokens_per_s"].get<double>());
  return out;
}

}  // namespace moelab
