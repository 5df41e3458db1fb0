#include "moelab/train/trainer.h"

#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "moelab/data/lm_batches.h"
#include "moelab/data/text_corpus.h"
#include "moelab/dist/distributed_run.h"
#include "moelab/dist/gradient_sync.h"
#include "moelab/models/model_from_config.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/evaluate.h"
#include "moelab/train/optimizer_factory.h"
#include "moelab/train/lr_schedule.h"
#include "moelab/train/progress.h"
#include "moelab/train/run_session.h"
#include "moelab/train/task_trainer.h"
#include "moelab/train/run_dir.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"
#include "moelab/util/mix64.h"

namespace moelab {

namespace {

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

CheckpointShards checkpoint_shards(LstmLanguageModel& model, const ParameterPlacement& placement,
                                   const DistributedRun& run, const Config& config, int64_t first_column,
                                   int64_t local_columns) {
  CheckpointShards shards;
  shards.communicator = run.communicator();
  shards.parallel = config.get_string("moe.parallel");
  shards.num_columns = config.get_int("train.batch");
  shards.first_column = first_column;
  shards.local_columns = local_columns;
  if (model->moe) {
    shards.num_experts = model->moe->options.num_experts();
    shards.local_experts = shards.num_experts;
    if (model->moe->exchange) {
      shards.first_expert = model->moe->exchange->first_expert();
      shards.local_experts = model->moe->exchange->local_experts();
      shards.expert_parameters = placement.expert_local;
    }
  }
  return shards;
}

}  // namespace

TrainResult train_language_model(const TrainRequest& request) {
  const Config& config = request.config;
  config.validate();
  const RunPaths paths(request.out_dir);

  if (config.get_string("model.task") != "lm")
    fail("train_language_model trains model.task = \"lm\", not \"{}\" (train_model picks the trainer)",
         config.get_string("model.task"));
  const auto resume_from = check_run_directory(paths, request);
  // Joins the launcher's group when WORLD_SIZE > 1. Rank 0 writes the run directory; every rank
  // trains on its share of each batch's columns.
  DistributedRun run(config);
  const auto& communicator = run.communicator();
  const int world = run.world_size();
  apply_compute_settings(config, run.launch().local_world_size);
  const auto device = training_device(config, run.launch().local_rank);

  const std::string corpus_dir = corpus_directory(config);
  VocabularyOptions vocab_options;
  vocab_options.min_count = config.get_int("data.min_count");
  vocab_options.max_size = config.get_int("data.max_vocab");
  TextCorpus corpus = load_text_corpus(corpus_dir, vocab_options);
  if (resume_from) {
    // The vocabulary is part of the run: reuse it so ids mean the same thing after a resume.
    corpus.vocabulary = Vocabulary::from_text(resume_from->vocabulary_text);
    corpus.train = load_split(corpus_dir + "/train.txt", corpus.vocabulary);
    corpus.valid = load_split(corpus_dir + "/valid.txt", corpus.vocabulary);
    corpus.test = load_split(corpus_dir + "/test.txt", corpus.vocabulary);
  }
  const int64_t batch = config.get_int("train.batch");
  const int64_t bptt = config.get_int("train.bptt");
  // The whole token stream goes to the device once; windows are then views, not copies per step.
  const LmBatches batches(corpus.train.to(device), batch, bptt);
  if (batch % world != 0)
    fail("train.batch = {} columns do not split evenly over {} ranks; use a multiple of {}", batch, world, world);
  const int64_t local_columns = batch / world, first_column = run.rank() * local_columns;

  // Seeded right before the model is built, so its initial weights depend on the seed alone; a
  // resume then replaces weights and generator state from the checkpoint.
  const auto seed = static_cast<uint64_t>(config.get_int("train.seed"));
  torch::manual_seed(seed);
  auto model = build_language_model(config, corpus.vocabulary.size());
  // Built on the CPU (the initial weights of a seed do not depend on the device), then moved before
  // the optimizer takes the parameters.
  model->to(device);
  auto optimizer = make_optimizer(config, model);
  const auto placement = place_parameters(model->parameters(), model->moe);
  GradientSync gradient_sync(communicator, placement.replicated, placement.expert_local);
  const auto shards = checkpoint_shards(model, placement, run, config, first_column, local_columns);
  LstmState state;
  int64_t step = 0, first_step = 0;
  double seconds_before_resume = 0;  // training time of earlier sessions of this run
  if (resume_from) {
    load_checkpoint(paths.checkpoint, *model, optimizer.get(), &state, /*restore_rng=*/true, &shards);
    step = resume_from->step;
    first_step = step;
    if (run.lead()) seconds_before_resume = truncate_metrics(paths.metrics, step);
  }
  // Replicas share initial weights (same seed) but not dropout masks or router noise.
  if (world > 1) torch::manual_seed(mix64(seed ^ mix64(static_cast<uint64_t>(step) * 977 + run.rank())) >> 1);
  if (run.lead()) {
    prepare_run_directory(paths, request);
    write_file_atomically(paths.config, config.to_toml());
    write_file_atomically(paths.vocabulary, corpus.vocabulary.to_text());
  }

  const int64_t total_steps = config.get_int("train.steps");
  const int64_t log_every = config.get_int("train.log_every");
  const int64_t eval_every = config.get_int("train.eval_every");
  const int64_t checkpoint_every = config.get_int("train.checkpoint_every");
  const int64_t eval_batch = config.get_int("train.eval_batch");
  const int64_t eval_max_tokens = config.get_int("train.eval_max_tokens");
  const int64_t nan_at_step = config.get_int("debug.nan_at_step");
  const double clip = config.get_float("train.clip");
  LrSchedule schedule{config.get_float("train.lr"), config.get_int("train.warmup"), total_steps,
                      config.get_string("train.decay"), config.get_float("train.min_lr_ratio")};
  CheckpointMeta meta{step, config.to_toml(), corpus.vocabulary.to_text()};
  int64_t last_checkpoint_step = step;

  std::optional<MetricsLog> metrics;
  if (run.lead()) metrics.emplace(paths.metrics);
  Progress progress(step, total_steps, log_every, request.quiet || !run.lead());
  if (step > 0) progress.message(fmt::format("resuming {} at step {}", paths.directory, step));
  progress.message(fmt::format("corpus {}: {} train tokens, vocabulary {}; {} windows of {}x{} per epoch",
                               corpus_dir, corpus.train.size(0), corpus.vocabulary.size(), batches.num_windows(),
                               bptt, batch));
  if (world > 1)
    progress.message(fmt::format("{} ranks ({}, {} parallel), {} batch columns each", world, communicator->backend(),
                                 config.get_string("moe.parallel"), local_columns));

  TrainingWindow window_stats;
  double train_seconds = 0;
  int64_t trained_tokens = 0;
  model->train();
  while (step < total_steps) {
    ++step;
    const auto started = Clock::now();
    const int64_t window_index = (step - 1) % batches.num_windows();
    if (window_index == 0) state = LstmState();  // a new epoch starts from a zero state
    const auto window = batches.window(window_index).columns(first_column, local_columns);
    const double lr = schedule.at(step);
    set_learning_rate(*optimizer, lr);

    auto out = model->forward(window.input, state);
    auto loss = model->loss(out.features, window.target);
    if (step == nan_at_step) loss = loss * std::numeric_limits<float>::quiet_NaN();
    const auto total = loss + out.aux_loss;
    // Set to none, not zeroed: backward then hands its fresh buffers over instead of adding them
    // into old ones (a full read-modify-write of every expert gradient per step).
    model->zero_grad(/*set_to_none=*/true);
    total.backward();
    // The loss figures travel with the gradients, so every rank judges the same (global) loss.
    std::vector<double> means = {loss.item<double>(), out.aux_loss.item<double>()};
    const bool sum_routing = world > 1 && !out.routing.empty();
    std::vector<double> sums = sum_routing ? pack_routing_stats(out.routing.front()) : std::vector<double>{};
    gradient_sync.synchronize(means, sums);
    if (sum_routing) out.routing.front() = unpack_routing_stats(sums, 0, out.routing.front());
    const double loss_value = means[0], aux_value = means[1];
    if (!std::isfinite(loss_value) || !std::isfinite(aux_value)) progress.finish();
    check_finite_loss(loss_value, aux_value, step, last_checkpoint_step, checkpoint_every, paths.checkpoint);
    model->mask_gradients(seed, step);
    double grad_norm = 0;
    if (clip > 0)
      grad_norm = world > 1 ? gradient_sync.clip_grad_norm(clip)
                            : torch::nn::utils::clip_grad_norm_(model->parameters(), clip);
    optimizer->step();
    state = out.state.detached();

    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    const int64_t tokens = window.target.numel() * world;
    train_seconds += seconds;
    trained_tokens += tokens;
    window_stats.add(loss_value, aux_value, seconds, tokens, out.routing);
    progress.update(step, window_stats.tokens_per_s(), window_stats.mean_loss(), window_stats.mean_aux_loss());

    if (step % log_every == 0 || step == total_steps) {
      auto record = window_stats.take_record(step, lr, grad_norm, /*with_perplexity=*/true, out.loss_terms);
      record.update({{"tokens", trained_tokens}, {"train_seconds", seconds_before_resume + train_seconds}});
      if (metrics) metrics->write(record);
    }
    if (eval_every > 0 && step % eval_every == 0 && step != total_steps) {
      const auto valid = evaluate_language_model(model, corpus.valid, eval_batch, bptt, eval_max_tokens, nullptr,
                                                 communicator.get());
      if (metrics)
        metrics->write({{"step", step},
                     {"valid_loss", valid.loss},
                     {"valid_ppl", valid.perplexity},
                     {"tokens_seen", step * batch * bptt},
                     {"train_seconds", seconds_before_resume + train_seconds}});
      progress.message(fmt::format("step {}: valid ppl {:.2f}", step, valid.perplexity));
    }
    if (step % checkpoint_every == 0 || step == total_steps) {
      meta.step = step;
      save_checkpoint(paths.checkpoint, *model, optimizer.get(), state, meta, &shards);
      last_checkpoint_step = step;
    }
    if (request.stop_after_step > 0 && step == request.stop_after_step && step != total_steps) {
      progress.finish();
      return TrainResult{false, step, {}};
    }
  }
  progress.finish();
  const auto training_tallies = communicator->tallies();

  // Final figures: validation with routing statistics, then test.
  RoutingStatsAccumulator routing;
  const auto eval_started = Clock::now();
  const auto valid =
      evaluate_language_model(model, corpus.valid, eval_batch, bptt, eval_max_tokens, &routing, communicator.get());
  const double eval_seconds = std::chrono::duration<double>(Clock::now() - eval_started).count();
  const auto test =
      evaluate_language_model(model, corpus.test, eval_batch, bptt, eval_max_tokens, nullptr, communicator.get());
  const double all_train_seconds = seconds_before_resume + train_seconds;
  if (metrics)
    metrics->write({{"step", step},
                 {"valid_loss", valid.loss},
                 {"valid_ppl", valid.perplexity},
                 {"test_ppl", test.perplexity},
                 {"tokens_seen", step * batch * bptt},
                 {"train_seconds", all_train_seconds}});
  const double seconds_per_step = step > 0 ? all_train_seconds / static_cast<double>(step) : 0.0;

  nlohmann::json summary = common_summary(config, model->costs());
  summary.update(
      {{"valid_ppl", valid.perplexity},
       {"test_ppl", test.perplexity},
       {"valid_loss", valid.loss},
       {"test_loss", test.loss},
       {"tokens_per_s", train_seconds > 0 ? trained_tokens / train_seconds : 0.0},
       {"train_seconds", all_train_seconds},
       // One pass over the training stream at this run's measured step time.
       {"epoch_seconds", seconds_per_step * static_cast<double>(batches.num_windows())},
       // Validation pass (batch train.eval_batch) wall time per token, routing statistics included.
       {"eval_us_per_token", valid.tokens > 0 ? eval_seconds * 1e6 / static_cast<double>(valid.tokens) : 0.0},
       {"steps", step},
       {"tokens_trained_this_session", trained_tokens},
       {"tokens_per_step", batch * bptt},
       {"vocab_size", corpus.vocabulary.size()},
       {"corpus", corpus_dir},
       {"ranks", world},
       {"parallel", world > 1 ? config.get_string("moe.parallel") : std::string("none")},
       {"moe_layers", moe_layers_summary(model->moe, routing)}});
  // A run made by `moelab upcycle` keeps where it came from next to its final figures.
  const std::string upcycle_report = paths.directory + "/upcycle.json";
  if (file_exists(upcycle_report)) summary["upcycle"] = nlohmann::json::parse(read_text_file(upcycle_report));
  if (world > 1) summary["communication"] = communication_summary(*communicator, training_tallies, step - first_step, train_seconds);
  if (run.lead()) write_file_atomically(paths.summary, summary.dump(2) + "\n");
  return TrainResult{true, step, summary};
}

TrainResult train_model(const TrainRequest& request) {
  const auto launch = LaunchEnvironment::from_environment();
  if (launch.distributed() && request.config.get_string("model.task") != "lm")
    fail("distributed training (WORLD_SIZE = {}) is implemented for model.task = \"lm\", not \"{}\"; run it as "
         "one process",
         launch.world_size, request.config.get_string("model.task"));
  return request.config.get_string("model.task") == "lm" ? train_language_model(request) : train_task_model(request);
}

}  // namespace moelab
