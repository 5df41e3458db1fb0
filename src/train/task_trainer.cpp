#include "moelab/train/task_trainer.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include "moelab/data/packed_batches.h"
#include "moelab/train/lr_schedule.h"
#include "moelab/train/optimizer_factory.h"
#include "moelab/train/progress.h"
#include "moelab/train/run_session.h"
#include "moelab/train/supervised_task.h"
#include "moelab/util/files.h"

namespace moelab {

namespace {

using Clock = std::chrono::steady_clock;

// Figures for metrics.jsonl: scalars only (per-type tables stay in summary.json).
nlohmann::json scalar_figures(const nlohmann::json& figures) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [key, value] : figures.items())
    if (value.is_number()) out[key] = value;
  return out;
}

}  // namespace

TrainResult train_task_model(const TrainRequest& request) {
  const Config& config = request.config;
  config.validate();
  const RunPaths paths(request.out_dir);
  const auto resume_from = check_run_directory(paths, request);
  apply_compute_settings(config);
  const auto device = training_device(config);

  // Seeded before the task builds its model (and draws vectors for words GloVe lacks).
  const auto seed = static_cast<uint64_t>(config.get_int("train.seed"));
  torch::manual_seed(seed);
  std::optional<std::string> saved_vocabulary;
  if (resume_from) saved_vocabulary = resume_from->vocabulary_text;
  const auto& task_name = config.get_string("model.task");
  auto task = task_name == "tagging" ? make_tagging_task(config, saved_vocabulary) : make_qa_task(config, saved_vocabulary);
  auto& model = task->model();
  model.to(device);
  auto optimizer = make_optimizer(config, model.parameters(), task->encoder()->moe);
  int64_t step = 0;
  double seconds_before_resume = 0;
  if (resume_from) {
    load_checkpoint(paths.checkpoint, model, optimizer.get(), nullptr, /*restore_rng=*/true);
    step = resume_from->step;
    seconds_before_resume = truncate_metrics(paths.metrics, step);
  }
  prepare_run_directory(paths, request);
  write_file_atomically(paths.config, config.to_toml());
  write_file_atomically(paths.vocabulary, task->vocabulary().words.to_text());

  const int64_t total_steps = config.get_int("train.steps");
  const int64_t batch_size = config.get_int("train.batch");
  const int64_t log_every = config.get_int("train.log_every");
  const int64_t eval_every = config.get_int("train.eval_every");
  const int64_t checkpoint_every = config.get_int("train.checkpoint_every");
  const int64_t nan_at_step = config.get_int("debug.nan_at_step");
  const double clip = config.get_float("train.clip");
  LrSchedule schedule{config.get_float("train.lr"), config.get_int("train.warmup"), total_steps,
                      config.get_string("train.decay"), config.get_float("train.min_lr_ratio")};
  CheckpointMeta meta{step, config.to_toml(), task->vocabulary().words.to_text()};
  int64_t last_checkpoint_step = step;

  // Each epoch has its own batch order, a function of the seed and the epoch alone, so a resumed
  // run sees the same batches as an uninterrupted one.
  const auto& lengths = task->train_lengths();
  const int64_t batches_per_epoch = (static_cast<int64_t>(lengths.size()) + batch_size - 1) / batch_size;
  int64_t batches_epoch = -1;
  std::vector<std::vector<int64_t>> batches;
  auto epoch_batches = [&](int64_t epoch) {
    // Kept non-negative whatever the seed: a negative shuffle seed means "no shuffle".
    const uint64_t shuffle_seed = (seed * 1000003 + static_cast<uint64_t>(epoch)) & 0x3fffffffffffffffULL;
    return length_grouped_batches(lengths, batch_size, static_cast<int64_t>(shuffle_seed));
  };
  // Training tokens in steps 1..step, exact across resumes (for the convergence curves' x axis).
  const int64_t tokens_per_epoch = std::accumulate(lengths.begin(), lengths.end(), int64_t{0});
  auto tokens_through = [&](int64_t through) {
    const int64_t full = through / batches_per_epoch, rest = through % batches_per_epoch;
    int64_t tokens = full * tokens_per_epoch;
    if (rest > 0) {
      const auto partial = epoch_batches(full);
      for (int64_t b = 0; b < rest; ++b)
        for (const auto e : partial[static_cast<size_t>(b)]) tokens += lengths[static_cast<size_t>(e)];
    }
    return tokens;
  };

  MetricsLog metrics(paths.metrics);
  Progress progress(step, total_steps, log_every, request.quiet);
  progress.show_perplexity(false);
  if (step > 0) progress.message(fmt::format("resuming {} at step {}", paths.directory, step));
  progress.message(task->describe_data() + fmt::format("; {} batches of up to {} per epoch", batches_per_epoch, batch_size));

  TrainingWindow window_stats;
  double train_seconds = 0;
  int64_t trained_tokens = 0;
  auto elapsed = [&] { return seconds_before_resume + train_seconds; };
  model.train();
  while (step < total_steps) {
    ++step;
    const auto started = Clock::now();
    const int64_t epoch = (step - 1) / batches_per_epoch;
    if (epoch != batches_epoch) {
      batches = epoch_batches(epoch);
      batches_epoch = epoch;
    }
    const auto& examples = batches[static_cast<size_t>((step - 1) % batches_per_epoch)];
    const double lr = schedule.at(step);
    set_learning_rate(*optimizer, lr);

    auto out = task->forward(examples);
    auto loss = out.loss;
    if (step == nan_at_step) loss = loss * std::numeric_limits<float>::quiet_NaN();
    const double loss_value = loss.item<double>();
    const double aux_value = out.encoded.aux_loss.item<double>();
    if (!std::isfinite(loss_value) || !std::isfinite(aux_value)) progress.finish();
    check_finite_loss(loss_value, aux_value, step, last_checkpoint_step, checkpoint_every, paths.checkpoint);
    model.zero_grad(/*set_to_none=*/true);
    (loss + out.encoded.aux_loss).backward();
    task->encoder()->mask_gradients(seed, step);
    double grad_norm = 0;
    if (clip > 0) grad_norm = torch::nn::utils::clip_grad_norm_(model.parameters(), clip);
    optimizer->step();

    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    train_seconds += seconds;
    trained_tokens += out.tokens;
    window_stats.add(loss_value, aux_value, seconds, out.tokens, out.encoded.routing);
    progress.update(step, window_stats.tokens_per_s(), window_stats.mean_loss(), window_stats.mean_aux_loss());

    if (step % log_every == 0 || step == total_steps) {
      auto record = window_stats.take_record(step, lr, grad_norm, /*with_perplexity=*/false, out.encoded.loss_terms);
      record.update({{"tokens", trained_tokens}, {"train_seconds", elapsed()}});
      metrics.write(record);
    }
    if (eval_every > 0 && step % eval_every == 0 && step != total_steps) {
      const auto valid = task->evaluate("valid", nullptr);
      auto record = scalar_figures(valid);
      record.update({{"step", step}, {"tokens_seen", tokens_through(step)}, {"train_seconds", elapsed()}});
      metrics.write(record);
      progress.message(fmt::format("step {}: valid {}", step, task->headline(valid)));
    }
    if (step % checkpoint_every == 0 || step == total_steps) {
      meta.step = step;
      save_checkpoint(paths.checkpoint, model, optimizer.get(), LstmState{}, meta);
      last_checkpoint_step = step;
    }
    if (request.stop_after_step > 0 && step == request.stop_after_step && step != total_steps) {
      progress.finish();
      return TrainResult{false, step, {}};
    }
  }
  progress.finish();

  RoutingStatsAccumulator routing;
  const auto eval_started = Clock::now();
  auto figures = task->evaluate("valid", &routing);
  const double eval_seconds = std::chrono::duration<double>(Clock::now() - eval_started).count();
  if (task->has_split("test")) figures.update(task->evaluate("test", nullptr));
  auto final_record = scalar_figures(figures);
  final_record.update({{"step", step}, {"tokens_seen", tokens_through(step)}, {"train_seconds", elapsed()}});
  metrics.write(final_record);

  const double seconds_per_step = step > 0 ? elapsed() / static_cast<double>(step) : 0.0;
  const auto data = task->data_summary();
  const double valid_tokens = data["valid"]["tokens"].get<double>();
  nlohmann::json summary = common_summary(config, task->costs());
  summary.update(figures);
  summary.update({{"task", task_name},
                  {"tokens_per_s", train_seconds > 0 ? static_cast<double>(trained_tokens) / train_seconds : 0.0},
                  {"train_seconds", elapsed()},
                  {"epoch_seconds", seconds_per_step * static_cast<double>(batches_per_epoch)},
                  // Validation pass wall time per token, routing statistics included.
                  {"eval_us_per_token", valid_tokens > 0 ? eval_seconds * 1e6 / valid_tokens : 0.0},
                  {"steps", step},
                  {"epochs", static_cast<double>(step) / static_cast<double>(batches_per_epoch)},
                  {"tokens_trained_this_session", trained_tokens},
                  {"data", data},
                  {"moe_layers", moe_layers_summary(task->encoder()->moe, routing)}});
  write_file_atomically(paths.summary, summary.dump(2) + "\n");
  return TrainResult{true, step, summary};
}

}  // namespace moelab
