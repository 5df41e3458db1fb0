#include "moelab/train/trainer.h"

#include <fmt/format.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>

#include "moelab/device/precision.h"
#include "moelab/train/distributed_run.h"
#include "moelab/train/gradient_sync.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/freeze.h"
#include "moelab/train/lr_schedule.h"
#include "moelab/train/optimizer_factory.h"
#include "moelab/train/progress.h"
#include "moelab/train/run_dir.h"
#include "moelab/train/run_session.h"
#include "moelab/train/training_task.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"
#include "moelab/util/mix64.h"
#include "moelab/util/stop_signal.h"

namespace moelab {

namespace {

// Adds one micro-batch's figures to the step's: tokens and loss terms summed, routing statistics
// summed per MoE layer.
void add_micro_batch(StepForward& step, StepForward&& part, bool first) {
  if (first) {
    step = std::move(part);
    return;
  }
  step.tokens += part.tokens;
  for (auto& [name, term] : part.loss_terms) {
    auto found = step.loss_terms.find(name);
    if (found == step.loss_terms.end())
      step.loss_terms.emplace(name, term);
    else
      found->second = found->second + term;
  }
  for (size_t i = 0; i < step.routing.size() && i < part.routing.size(); ++i)
    step.routing[i] = merged(step.routing[i], part.routing[i]);
}

using Clock = std::chrono::steady_clock;

// Collective volume and time of this session's training steps, per kind and per step.
nlohmann::json communication_summary(const Communicator& communicator,
                                     const std::map<std::string, CollectiveTally>& tallies, int64_t steps,
                                     double train_seconds) {
  nlohmann::json out = {{"backend", communicator.backend()}, {"ranks", communicator.world_size()}};
  const double per_step = steps > 0 ? 1.0 / static_cast<double>(steps) : 0.0;
  for (const auto& [kind, tally] : tallies)
    out[kind] = {{"calls_per_step", static_cast<double>(tally.calls) * per_step},
                 {"mb_sent_per_step", static_cast<double>(tally.bytes_sent) * per_step / 1e6},
                 {"ms_per_step", tally.seconds * per_step * 1e3},
                 {"share_of_step", train_seconds > 0 ? tally.seconds / train_seconds : 0.0}};
  return out;
}

// Figures for metrics.jsonl: numbers only (per-type tables stay in summary.json).
nlohmann::json scalar_figures(const nlohmann::json& figures) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [key, value] : figures.items())
    if (value.is_number()) out[key] = value;
  return out;
}

}  // namespace

TrainResult train_model(const TrainRequest& request) {
  const Config& config = request.config;
  config.validate();
  const RunPaths paths(request.out_dir);
  const auto launch = LaunchEnvironment::from_environment();
  if (launch.distributed() && config.get_string("model.task") != "lm")
    fail("distributed training (WORLD_SIZE = {}) is implemented for model.task = \"lm\", not \"{}\"; run it as "
         "one process",
         launch.world_size, config.get_string("model.task"));
  const auto resume_from = check_run_directory(paths, request);
  // Joins the launcher's group when WORLD_SIZE > 1. Rank 0 writes the run directory; every rank
  // trains on its share of each batch.
  DistributedRun run(config);
  const auto& communicator = run.communicator();
  const int world = run.world_size();
  apply_compute_settings(config, run.launch().local_world_size);
  const auto device = training_device(config, run.launch().local_rank);

  // Seeded before the task reads its data and builds its model, so the initial weights (and the
  // vectors drawn for words GloVe lacks) depend on the seed alone; a resume then replaces weights
  // and generator state from the checkpoint.
  const auto seed = static_cast<uint64_t>(config.get_int("train.seed"));
  torch::manual_seed(seed);
  std::optional<std::string> saved_vocabulary;
  if (resume_from) saved_vocabulary = resume_from->meta.vocabulary_text;
  auto task = make_training_task({config, device, run, saved_vocabulary, paths.directory});
  auto& model = task->model();
  // Moved before the optimizer takes the parameters.
  model.to(device);
  // Frozen before the optimizer takes the parameters, so it keeps no state for them.
  const auto frozen = freeze_parameters(model, config.get_string_list("train.freeze"));
  const auto moe_layers = task->moe_layers();
  auto optimizer = make_optimizer(config, model.parameters(), moe_layers);
  const auto placement = place_parameters(model.parameters(), moe_layers);
  GradientSync gradient_sync(communicator, placement.replicated, placement.expert_local);
  task->prepare_checkpoint_shards();
  LstmState* carried_state = task->carried_state();
  int64_t step = 0, first_step = 0;
  double seconds_before_resume = 0;  // training time of earlier sessions of this run
  if (resume_from) {
    load_checkpoint(resume_from->path, model, optimizer.get(), carried_state, /*restore_rng=*/true,
                    task->checkpoint_shards());
    step = resume_from->meta.step;
    first_step = step;
    if (run.lead())
      seconds_before_resume = truncate_metrics(paths.metrics, step, step == config.get_int("train.steps"));
  }
  // Replicas share initial weights (same seed) but not dropout masks or router noise.
  if (world > 1) torch::manual_seed(mix64(seed ^ mix64(static_cast<uint64_t>(step) * 977 + run.rank())) >> 1);
  if (run.lead()) {
    prepare_run_directory(paths, resume_from);
    write_file_atomically(paths.config, config.to_toml());
    write_file_atomically(paths.vocabulary, task->vocabulary_text());
    for (const auto& [name, bytes] : task->run_files()) write_file_atomically(paths.directory + "/" + name, bytes);
  }

  const int64_t total_steps = config.get_int("train.steps");
  const int64_t log_every = config.get_int("train.log_every");
  const int64_t eval_every = config.get_int("train.eval_every");
  const int64_t checkpoint_every = config.get_int("train.checkpoint_every");
  const int64_t nan_at_step = config.get_int("debug.nan_at_step");
  const int64_t signal_at_step = config.get_int("debug.signal_at_step");
  const double clip = config.get_float("train.clip");
  const int64_t micro_batches = config.get_int("train.accumulate");
  const auto precision = parse_precision(config.get_string("train.precision"));
  // Evaluation runs in the precision the model trains in.
  auto evaluate_split = [&](const std::string& split, std::vector<RoutingStatsAccumulator>* routing) {
    const LowerPrecisionScope lower(device, precision);
    return task->evaluate(split, routing);
  };
  LrSchedule schedule{config.get_float("train.lr"), config.get_int("train.warmup"), total_steps,
                      config.get_string("train.decay"), config.get_float("train.min_lr_ratio")};
  CheckpointMeta meta{step, config.to_toml(), task->vocabulary_text()};
  int64_t last_checkpoint_step = step;
  auto save = [&] {
    meta.step = step;
    save_checkpoint(paths.checkpoint, model, optimizer.get(), carried_state ? *carried_state : LstmState{}, meta,
                    task->checkpoint_shards());
    last_checkpoint_step = step;
  };

  // The best validation figure so far keeps its own checkpoint (a resumed run continues the record).
  const std::string selection = task->selection_figure();
  double best_value = -std::numeric_limits<double>::infinity();
  int64_t best_step = -1;
  if (resume_from && !selection.empty() && file_exists(paths.best_record)) {
    const auto record = nlohmann::json::parse(read_text_file(paths.best_record));
    if (record.value("step", int64_t{0}) <= step) {
      best_value = record.value("value", best_value);
      best_step = record.value("step", best_step);
    }
  }
  auto keep_if_best = [&](const nlohmann::json& figures) {
    if (selection.empty() || !figures.contains(selection)) return;
    const double value = figures[selection].get<double>();
    if (!(value > best_value)) return;
    best_value = value;
    best_step = step;
    meta.step = step;
    // With shards the save is a collective, so every rank calls it (the figures are the same on all).
    if (run.lead() || task->checkpoint_shards())
      save_checkpoint(paths.best_checkpoint, model, /*optimizer=*/nullptr, LstmState{}, meta, task->checkpoint_shards());
    if (run.lead())
      write_file_atomically(paths.best_record,
                            nlohmann::json({{"step", step}, {"figure", selection}, {"value", value}}).dump() + "\n");
  };

  std::optional<MetricsLog> metrics;
  if (run.lead()) metrics.emplace(paths.metrics);
  Progress progress(step, total_steps, log_every, request.quiet || !run.lead());
  progress.show_perplexity(task->reports_perplexity());
  if (step > 0) progress.message(fmt::format("resuming {} at step {}", paths.directory, step));
  progress.message(task->describe_data());
  if (const auto warning = slow_precision_warning(device, precision); !warning.empty()) progress.message(warning);
  if (world > 1)
    progress.message(fmt::format("{} ranks ({}, {} parallel)", world, communicator->backend(),
                                 config.get_string("moe.parallel")));

  // Asked to stop (SIGINT, SIGTERM): the step just done is checkpointed, so a resume loses nothing.
  auto stop_by_signal = [&] {
    if (last_checkpoint_step != step) save();
    progress.finish();
    // A rank that got no signal itself learned of the stop from another rank through the
    // all-reduce; it ends by SIGTERM like the others, so a launcher sees one cause.
    const int received = stop_signal_received();
    return TrainResult{false, step, {}, received != 0 ? received : SIGTERM};
  };

  TrainingWindow window_stats;
  double train_seconds = 0;
  int64_t trained_tokens = 0;
  auto elapsed = [&] { return seconds_before_resume + train_seconds; };
  model.train();
  bool stop_requested = false;
  while (step < total_steps) {
    ++step;
    const auto started = Clock::now();
    if (step == signal_at_step) raise(SIGTERM);
    const double lr = schedule.at(step);
    set_learning_rate(*optimizer, lr);

    // Set to none, not zeroed: backward then hands its fresh buffers over instead of adding them
    // into old ones (a full read-modify-write of every expert gradient per step).
    model.zero_grad(/*set_to_none=*/true);
    // Gradient accumulation: each micro-batch's backward adds its 1/n share of the step's gradient;
    // its figures are summed into `out` (losses as means over the micro-batches). A batch with
    // fewer examples than train.accumulate runs as fewer micro-batches, so none is empty.
    const int64_t parts = task->micro_batches_at(step, micro_batches);
    for (const auto& layer : moe_layers) layer.layer.ptr()->start_step(parts);
    StepForward out;
    torch::Tensor loss_sum, aux_sum;
    for (int64_t micro = 0; micro < parts; ++micro) {
      auto part = [&] {
        const LowerPrecisionScope lower(device, precision);
        return task->forward(StepSlice{step, micro, parts});
      }();
      auto loss = part.loss;
      if (step == nan_at_step) loss = loss * std::numeric_limits<float>::quiet_NaN();
      const auto total = loss + part.aux_loss;
      (parts == 1 ? total : total / static_cast<double>(parts)).backward();
      const bool first = micro == 0;
      loss_sum = first ? loss.detach() : loss_sum + loss.detach();
      aux_sum = first ? part.aux_loss.detach() : aux_sum + part.aux_loss.detach();
      add_micro_batch(out, std::move(part), first);
    }
    // The loss figures travel with the gradients, so every rank judges the same (global) loss; a
    // non-finite loss is caught here, before the optimizer applies anything.
    // A stop request rides along too: if any rank was asked to stop, all stop after this step, so
    // a collective checkpoint finds every rank there.
    std::vector<double> means = {loss_sum.item<double>() / static_cast<double>(parts),
                                 aux_sum.item<double>() / static_cast<double>(parts),
                                 stop_signal_received() != 0 ? 1.0 : 0.0};
    for (auto& [name, term] : out.loss_terms) term = term / static_cast<double>(parts);
    std::vector<double> sums;
    std::vector<size_t> offsets;  // where each layer's statistics start in `sums`
    if (world > 1)
      for (const auto& layer : out.routing) {
        offsets.push_back(sums.size());
        const auto packed = pack_routing_stats(layer);
        sums.insert(sums.end(), packed.begin(), packed.end());
      }
    gradient_sync.synchronize(means, sums);
    for (size_t i = 0; i < offsets.size(); ++i) out.routing[i] = unpack_routing_stats(sums, offsets[i], out.routing[i]);
    const double loss_value = means[0], aux_value = means[1];
    stop_requested = means[2] > 0;
    if (!std::isfinite(loss_value) || !std::isfinite(aux_value)) progress.finish();
    check_finite_loss(loss_value, aux_value, step, last_checkpoint_step, checkpoint_every, paths.checkpoint);
    task->mask_gradients(seed, step);
    double grad_norm = 0;
    if (clip > 0)
      grad_norm = world > 1 ? gradient_sync.clip_grad_norm(clip) : torch::nn::utils::clip_grad_norm_(model.parameters(), clip);
    optimizer->step();
    // Routers that balance by state (aux-loss-free biases) move it by the step's global loads: the
    // statistics were summed over the ranks above, so every rank moves it alike.
    for (size_t i = 0; i < moe_layers.size() && i < out.routing.size(); ++i)
      if (moe_layers[i].layer->router) moe_layers[i].layer->router->after_step(out.routing[i].assigned, out.routing[i].num_tokens);

    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    train_seconds += seconds;
    trained_tokens += out.tokens;
    window_stats.add(loss_value, aux_value, seconds, out.tokens, out.routing);
    progress.update(step, window_stats.tokens_per_s(), window_stats.mean_loss(), window_stats.mean_aux_loss());

    if (step % log_every == 0 || step == total_steps) {
      auto record = window_stats.take_record(step, lr, grad_norm, task->reports_perplexity(), out.loss_terms);
      // Counted from the run's start, not this session's: a resumed run's curve continues.
      record.update({{"tokens", task->tokens_through(first_step) + trained_tokens}, {"train_seconds", elapsed()}});
      if (metrics) metrics->write(record);
    }
    if (eval_every > 0 && step % eval_every == 0 && step != total_steps) {
      const auto valid = evaluate_split("valid", nullptr);
      auto record = scalar_figures(valid.figures);
      record.update({{"step", step}, {"tokens_seen", task->tokens_through(step)}, {"train_seconds", elapsed()}});
      if (metrics) metrics->write(record);
      progress.message(fmt::format("step {}: valid {}", step, task->headline(valid.figures)));
      keep_if_best(valid.figures);
    }
    if (step % checkpoint_every == 0 || step == total_steps) save();
    // Also at the last step: the final evaluation (for translation, beam search over the test set)
    // can outlast a batch system's grace period; the resumed run does it and nothing else.
    if (stop_requested) return stop_by_signal();
    if (request.stop_after_step > 0 && step == request.stop_after_step && step != total_steps) {
      progress.finish();
      return TrainResult{false, step, {}, 0};
    }
  }
  progress.finish();
  const auto training_tallies = communicator->tallies();

  // Final figures: validation with routing statistics, then test.
  std::vector<RoutingStatsAccumulator> routing;
  const auto eval_started = Clock::now();
  auto valid = evaluate_split("valid", &routing);
  const double eval_seconds = std::chrono::duration<double>(Clock::now() - eval_started).count();
  keep_if_best(valid.figures);
  auto final_record = scalar_figures(valid.figures);
  final_record.update({{"step", step}, {"tokens_seen", task->tokens_through(step)}, {"train_seconds", elapsed()}});
  // With train.select = best the summary describes the model that validated best, as the field
  // reports (early stopping on the development set); the last step's figures stay in metrics.jsonl.
  const bool select_best = config.get_string("train.select") == "best" && !selection.empty();
  int64_t selected_step = step;
  if (select_best && best_step >= 0 && best_step != step) {
    // best.pt is written before best.json: a run killed between the two and resumed could pair a
    // record with another step's weights, so the file's own step must agree.
    const auto best = find_checkpoint(paths.best_checkpoint);
    if (best && best->meta.step == best_step) {
      load_checkpoint(best->path, model, /*optimizer=*/nullptr, /*state=*/nullptr, /*restore_rng=*/false,
                      task->checkpoint_shards());
      selected_step = best_step;
      routing.clear();
      valid = evaluate_split("valid", &routing);
    } else {
      progress.message(fmt::format("warning: {} does not hold step {} named by {}; reporting the last step",
                                   paths.best_checkpoint, best_step, paths.best_record));
    }
  }
  nlohmann::json figures = valid.figures;
  if (task->has_split("test")) figures.update(evaluate_split("test", nullptr).figures);
  if (!select_best && task->has_split("test")) final_record.update(scalar_figures(figures));
  if (metrics) metrics->write(final_record);

  const double seconds_per_step = step > 0 ? elapsed() / static_cast<double>(step) : 0.0;
  const double batches_per_epoch = static_cast<double>(task->batches_per_epoch());
  nlohmann::json summary = common_summary(config, task->costs());
  summary.update(figures);
  summary.update(task->summary_fields());
  summary.update(
      {{"task", config.get_string("model.task")},
       {"precision", config.get_string("train.precision")},
       {"frozen_parameters", frozen},
       {"tokens_per_s", train_seconds > 0 ? static_cast<double>(trained_tokens) / train_seconds : 0.0},
       {"train_seconds", elapsed()},
       // One pass over the training data at this run's measured step time.
       {"epoch_seconds", seconds_per_step * batches_per_epoch},
       {"epochs", static_cast<double>(step) / batches_per_epoch},
       // Validation pass (batch train.eval_batch) wall time per token, routing statistics included.
       {"eval_us_per_token", valid.tokens > 0 ? eval_seconds * 1e6 / static_cast<double>(valid.tokens) : 0.0},
       {"steps", step},
       {"selected_step", selected_step},
       {"tokens_trained_this_session", trained_tokens},
       {"ranks", world},
       {"parallel", world > 1 ? config.get_string("moe.parallel") : std::string("none")},
       {"moe_layers", moe_layers_summary(moe_layers, routing)}});
  // A run made by `moelab upcycle` keeps where it came from next to its final figures.
  const std::string upcycle_report = paths.directory + "/upcycle.json";
  if (file_exists(upcycle_report)) summary["upcycle"] = nlohmann::json::parse(read_text_file(upcycle_report));
  if (world > 1) summary["communication"] = communication_summary(*communicator, training_tallies, step - first_step, train_seconds);
  if (world > 1) {
    // Collective: every rank's peak (expert parallelism should shrink each rank's expert part).
    const auto peaks = all_gather_cat(*communicator, torch::tensor({peak_rss_mb()}, torch::kDouble), 0);
    summary["peak_rss_mb_per_rank"] = std::vector<double>(peaks.data_ptr<double>(), peaks.data_ptr<double>() + peaks.numel());
  }
  if (run.lead()) write_file_atomically(paths.summary, summary.dump(2) + "\n");
  return TrainResult{true, step, summary, 0};
}

}  // namespace moelab
