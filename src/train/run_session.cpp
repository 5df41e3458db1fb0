#include "moelab/train/run_session.h"

#include <cmath>
#include <filesystem>
#include <thread>

#include "moelab/device/device.h"
#include "moelab/dispatch/grouped_path.h"
#include "moelab/dispatch/grouped_path_cache.h"
#include "moelab/util/blas_env.h"
#include "moelab/util/build_commit.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab {

namespace {

// A directory with only config/metrics never reached its first checkpoint: nothing to protect.
bool holds_run(const RunPaths& paths) { return checkpoint_exists(paths.checkpoint) || file_exists(paths.summary); }

}  // namespace

std::optional<FoundCheckpoint> check_run_directory(const RunPaths& paths, const TrainRequest& request) {
  namespace fs = std::filesystem;
  std::optional<FoundCheckpoint> resume_from;
  if (request.resume) resume_from = find_checkpoint(paths.checkpoint);
  if (resume_from) {
    const auto saved = Config::from_toml_string(resume_from->meta.config_toml, resume_from->path);
    const auto difference = saved.first_experiment_difference(request.config);
    if (!difference.empty())
      fail("cannot resume {}: its config differs in {}; start a new --out or drop --resume", paths.directory,
           difference);
  }
  if (fs::exists(paths.directory) && !fs::is_directory(paths.directory))
    fail("--out {} exists and is not a directory", paths.directory);
  if (holds_run(paths) && !request.resume && !request.force)
    fail("{} already holds a run; use --resume to continue it or --force to replace it", paths.directory);
  return resume_from;
}

void prepare_run_directory(const RunPaths& paths, const std::optional<FoundCheckpoint>& resume_from) {
  namespace fs = std::filesystem;
  // A fresh start (no checkpoint to continue) clears what an earlier run left: a replaced run
  // (--force; check_run_directory refused anything else), or the log of one killed before its
  // first checkpoint, which would otherwise stay at the top of the new metrics.jsonl.
  if (!resume_from)
    for (const auto& file : {paths.config, paths.metrics, paths.summary, paths.checkpoint, paths.vocabulary,
                             paths.best_checkpoint, paths.best_record, previous_checkpoint_path(paths.checkpoint),
                             previous_checkpoint_path(paths.best_checkpoint)})
      fs::remove(file);
  // Resuming from the previous checkpoint because the newest would not read: the unreadable file is
  // set aside (kept for a post-mortem), so the next save does not make it the fallback.
  if (resume_from && resume_from->path != paths.checkpoint && fs::exists(paths.checkpoint))
    fs::rename(paths.checkpoint, paths.checkpoint + ".unreadable");
  fs::create_directories(paths.directory);
}

double truncate_metrics(const std::string& path, int64_t last_step, bool final_step) {
  if (!file_exists(path)) return 0.0;
  std::ifstream in(path);
  std::string kept, line;
  double train_seconds = 0.0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      const auto record = nlohmann::json::parse(line);
      const auto step = record.value("step", int64_t{0});
      if (step > last_step) continue;
      // Evaluation lines carry tokens_seen; at the final step only the final evaluation writes one.
      if (final_step && step == last_step && record.contains("tokens_seen")) continue;
      train_seconds = std::max(train_seconds, record.value("train_seconds", 0.0));
    } catch (const nlohmann::json::exception&) {
      continue;  // a line cut short by a kill
    }
    kept += line + "\n";
  }
  write_file_atomically(path, kept);
  return train_seconds;
}

MetricsLog::MetricsLog(const std::string& path) : out_(path, std::ios::app) {
  if (!out_) fail("cannot write {}", path);
}

void MetricsLog::write(const nlohmann::json& record) {
  out_ << record.dump() << "\n";
  out_.flush();
}

void TrainingWindow::add(double loss, double aux_loss, double seconds, int64_t tokens,
                         const std::vector<RoutingStats>& routing) {
  add_routing(routing_, routing);
  loss_ += loss;
  aux_ += aux_loss;
  seconds_ += seconds;
  tokens_ += tokens;
  ++steps_;
}

nlohmann::json TrainingWindow::take_record(int64_t step, double lr, double grad_norm, bool with_perplexity,
                                           const std::map<std::string, torch::Tensor>& loss_terms) {
  nlohmann::json record = {{"step", step},
                           {"loss", mean_loss()},
                           {"aux_loss", mean_aux_loss()},
                           {"lr", lr},
                           {"grad_norm", grad_norm},
                           {"tokens_per_s", tokens_per_s()}};
  if (with_perplexity) record["ppl"] = std::exp(mean_loss());
  for (const auto& [name, value] : loss_terms) record[name + "_loss"] = value.item<double>();
  if (!routing_.empty()) {
    record["moe_layers"] = nlohmann::json::array();
    for (const auto& layer : routing_) record["moe_layers"].push_back(layer.to_json());
  }
  *this = TrainingWindow();
  return record;
}

void apply_compute_settings(const Config& config, int processes_per_machine) {
  int64_t threads = config.get_int("train.threads");
  if (threads <= 0)
    threads = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()) /
                                       std::max(1, processes_per_machine));
  at::set_num_threads(static_cast<int>(threads));
  apply_grouped_path_settings(config);
}

void apply_grouped_path_settings(const Config& config) {
  set_grouped_path(parse_grouped_path(config.get_string("train.grouped_path")));
  const auto cache = config.get_string("train.grouped_path_cache");
  set_grouped_path_cache(cache == "off" ? "" : cache == "user" ? default_grouped_path_cache() : cache);
}

torch::Device training_device(const Config& config, int local_rank) {
  return device_for_process(config.get_string("train.device"), local_rank);
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

void check_finite_loss(double loss, double aux_loss, int64_t step, int64_t last_checkpoint_step,
                       int64_t checkpoint_every, const std::string& checkpoint_path) {
  if (std::isfinite(loss) && std::isfinite(aux_loss)) return;
  const char* what = std::isnan(loss) || std::isnan(aux_loss) ? "NaN" : "infinite";
  if (last_checkpoint_step == 0)
    fail("loss became {} at step {}; stopped before the first checkpoint (train.checkpoint_every = {}), "
         "so there is none to keep",
         what, step, checkpoint_every);
  fail("loss became {} at step {}; stopped with the last good checkpoint (step {}) kept in {}", what, step,
       last_checkpoint_step, checkpoint_path);
}

nlohmann::json moe_layers_summary(const std::vector<NamedMoELayer>& moe_layers,
                                  const std::vector<RoutingStatsAccumulator>& routing) {
  auto out = nlohmann::json::array();
  for (size_t i = 0; i < moe_layers.size(); ++i) {
    auto layer = moe_layers[i].layer->accounting();
    layer["name"] = moe_layers[i].name;
    if (i < routing.size() && !routing[i].empty()) {
      layer.update(routing[i].to_json());
      // What the tokens measured actually cost, where the router lets the expert count vary.
      layer["flops_per_token_measured"] = moe_layers[i].layer->flops_per_token_at(routing[i].experts_per_token());
    }
    out.push_back(layer);
  }
  return out;
}

nlohmann::json common_summary(const Config& config, const std::vector<LayerCost>& costs) {
  const auto total = total_cost(costs);
  nlohmann::json summary = {{"params_total", total.params_total},
                            {"params_active_per_token", total.params_active},
                            {"flops_per_token", total.flops},
                            {"peak_rss_mb", peak_rss_mb()},
                            {"threads", at::get_num_threads()},
                            {"cpu", cpu_description()},
                            {"device", config.get_string("train.device")},
                            {"libtorch", libtorch_description()},
                            {"moelab_commit", build_commit()},
                            {"layers", cost_to_json(costs)["layers"]}};
  // Which kernels the grouped products ran on. The paths round differently (same seed: loss 6.864
  // with oneDNN vs 6.868 with OpenBLAS at step 50 of kjv-moe), so a run repeats bit for bit only on
  // the same paths: `auto` takes them from train.grouped_path_cache when an earlier process on this
  // machine measured the shape ("saved"), else measures and saves them.
  summary["grouped_path"] = config.get_string("train.grouped_path");
  summary["grouped_paths_used"] = nlohmann::json::array();
  for (const auto& choice : grouped_path_choices())
    summary["grouped_paths_used"].push_back({{"experts", choice.shape.experts},
                                             {"in_width", choice.shape.in_width},
                                             {"out_width", choice.shape.out_width},
                                             {"rows_per_expert", choice.shape.rows_bucket},
                                             {"product", grouped_product_name(choice.shape.product)},
                                             {"path", grouped_path_name(choice.path)},
                                             {"source", choice.saved ? "saved" : "measured"}});
  return summary;
}

}  // namespace moelab
