// What every trainer (language model, tagger, span extractor) does the same way around its loop:
// guarding the run directory, resuming, the metrics log, threads, stopping on a non-finite loss,
// and the summary fields that do not depend on the task.
#pragma once
#include <torch/optim/optimizer.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "moelab/layers/moe_layer.h"
#include "moelab/layers/routing_stats.h"
#include "moelab/models/layer_cost.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/run_dir.h"
#include "moelab/train/trainer.h"

namespace moelab {

// The checkpoint to continue from (when --resume and one exists); its config must match the
// requested one on every experiment key. Then refuses to mix runs: an existing run is continued
// (--resume) or replaced (--force), never silently overwritten. Both checks come before any work.
// The newest readable checkpoint is taken (see find_checkpoint).
std::optional<FoundCheckpoint> check_run_directory(const RunPaths& paths, const TrainRequest& request);

// Clears a run being replaced with --force and creates the directory; call it only once the new
// data and model are known to be good, so a failed replacement keeps the old run.
void prepare_run_directory(const RunPaths& paths, const std::optional<FoundCheckpoint>& resume_from);

// Drops metrics lines logged after the checkpoint we resume from, so the log reads as one run; with
// `final_step`, also the final evaluation's line at that step (a run killed after its last
// checkpoint but before its summary evaluates again). Returns the training seconds the kept lines
// had reached, so wall-time curves continue.
double truncate_metrics(const std::string& path, int64_t last_step, bool final_step = false);

class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path);
  void write(const nlohmann::json& record);

 private:
  std::ofstream out_;
};

// One logging window of training steps: mean loss, auxiliary loss, tokens/s and routing statistics,
// turned into a metrics.jsonl line at the end of the window.
class TrainingWindow {
 public:
  void add(double loss, double aux_loss, double seconds, int64_t tokens, const std::vector<RoutingStats>& routing);
  double mean_loss() const { return loss_ / static_cast<double>(steps_); }
  double mean_aux_loss() const { return aux_ / static_cast<double>(steps_); }
  double tokens_per_s() const { return static_cast<double>(tokens_) / seconds_; }
  // The window's record (step, loss, [ppl,] aux_loss, lr, grad_norm, tokens_per_s, the last step's
  // loss terms, moe_layers); starts a new window.
  nlohmann::json take_record(int64_t step, double lr, double grad_norm, bool with_perplexity,
                             const std::map<std::string, torch::Tensor>& loss_terms);

 private:
  std::vector<RoutingStatsAccumulator> routing_;  // one per MoE layer
  double loss_ = 0, aux_ = 0, seconds_ = 0;
  int64_t tokens_ = 0, steps_ = 0;
};

// Applies train.threads (0 = every core, shared by the `processes_per_machine` of a distributed run)
// and the grouped-path settings to this process.
void apply_compute_settings(const Config& config, int processes_per_machine = 1);
// train.grouped_path and train.grouped_path_cache alone: what a trained run's evaluation needs to
// multiply its experts along the paths its training took.
void apply_grouped_path_settings(const Config& config);

// train.device as a device this process can use (a one-line Error when it cannot); with several
// processes on one machine, "cuda" means cuda:LOCAL_RANK.
torch::Device training_device(const Config& config, int local_rank = 0);

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

// Throws Error when the loss or the auxiliary loss is not finite, saying which checkpoint survives.
void check_finite_loss(double loss, double aux_loss, int64_t step, int64_t last_checkpoint_step,
                       int64_t checkpoint_every, const std::string& checkpoint_path);

// summary.json's `moe_layers`: each MoE layer's accounting with its validation routing statistics;
// an empty list when the model has no MoE layer.
nlohmann::json moe_layers_summary(const std::vector<NamedMoELayer>& moe_layers,
                                  const std::vector<RoutingStatsAccumulator>& routing);

// Parameters, FLOPs, memory and the grouped-product kernels used: the task-independent part of
// summary.json.
nlohmann::json common_summary(const Config& config, const std::vector<LayerCost>& costs);

}  // namespace moelab
