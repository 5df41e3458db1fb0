// What the one training loop (trainer.h) asks of a task: a model, the forward pass and loss of a
// training step's batch, evaluation of a split, and what the checkpoint and summary need beyond
// the loop's own figures. The loop owns everything every task does the same way: the run
// directory, resume, the schedule and optimizer, NaN handling, gradient synchronisation and
// clipping, logging, checkpoints and the common summary.
#pragma once
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moelab/config/config.h"
#include "moelab/train/distributed_run.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/layers/routing_stats.h"
#include "moelab/models/language_model.h"
#include "moelab/models/layer_cost.h"
#include "moelab/train/checkpoint.h"

namespace moelab {

// One training step's forward pass on this rank's share of the batch.
struct StepForward {
  torch::Tensor loss;      // the task's own loss (scalar)
  torch::Tensor aux_loss;  // weighted balancing losses (scalar)
  std::map<std::string, torch::Tensor> loss_terms;
  std::vector<RoutingStats> routing;  // one per MoE layer
  int64_t tokens = 0;                 // tokens the step trained on, over all ranks
};

// Which part of a training step a forward pass computes: with gradient accumulation
// (train.accumulate = n) a step's batch is split into n micro-batches, run one after another.
struct StepSlice {
  int64_t step = 1;           // 1-based
  int64_t micro_batch = 0;    // 0 .. micro_batches - 1
  int64_t micro_batches = 1;
};

// Micro-batch `slice` of a batch's example indices: n nearly equal contiguous parts (the first
// size % n one longer). An empty part is an error (moelab::Error naming the step): the trainer asks
// micro_batches_for how many parts a batch has, so one only shows a task that split differently.
std::vector<int64_t> micro_batch_of(const std::vector<int64_t>& examples, const StepSlice& slice);
// How many micro-batches a batch of `examples` is split into when train.accumulate asks for
// `configured`: fewer when it has fewer examples, so that no micro-batch is empty.
int64_t micro_batches_for(int64_t examples, int64_t configured);

// A split's figures named "<split>_<figure>" (valid_ppl, valid_entity_f1, ...); per-type tables may
// sit next to the numbers (only numbers go to metrics.jsonl).
struct SplitEvaluation {
  nlohmann::json figures;
  int64_t tokens = 0;
};

class TrainingTask {
 public:
  virtual ~TrainingTask() = default;
  virtual torch::nn::Module& model() = 0;
  virtual std::vector<NamedMoELayer> moe_layers() const = 0;
  virtual void mask_gradients(uint64_t seed, int64_t step) = 0;
  virtual std::vector<LayerCost> costs() const = 0;
  virtual std::string vocabulary_text() const = 0;

  // Batches in one pass over the training data; step s (1-based) trains on batch (s-1) mod this of
  // epoch (s-1) / this, whose order depends on the seed and epoch alone, so a resumed run sees the
  // batches an uninterrupted one does.
  virtual int64_t batches_per_epoch() const = 0;
  // How many micro-batches step `step` runs when train.accumulate = `configured`: fewer when its
  // batch has fewer examples (a translation batch can be one long pair). Each then carries 1/that
  // of the step's loss and gradient, and pooled balance losses count that many parts.
  virtual int64_t micro_batches_at(int64_t step, int64_t configured) {
    (void)step;
    return configured;
  }
  // The forward pass of one micro-batch of step slice.step (the whole batch when micro_batches = 1),
  // slice.micro_batches being what micro_batches_at gave.
  virtual StepForward forward(const StepSlice& slice) = 0;
  // Training tokens of steps 1..step over all ranks (the x axis of convergence curves).
  virtual int64_t tokens_through(int64_t step) const = 0;

  // In eval mode without gradients; a collective under distributed training. Routing statistics go
  // to `routing` (one accumulator per MoE layer) when given.
  virtual SplitEvaluation evaluate(const std::string& split, std::vector<RoutingStatsAccumulator>* routing) = 0;
  virtual bool has_split(const std::string& split) const = 0;  // "valid", "test"
  virtual std::string headline(const nlohmann::json& figures) const = 0;  // "ppl 123.45"
  virtual bool reports_perplexity() const = 0;  // training lines show exp(loss)

  virtual std::string describe_data() const = 0;  // progress lines
  // Task-specific summary.json entries (corpus, vocabulary size, data figures, ...).
  virtual nlohmann::json summary_fields() const = 0;

  // What a checkpoint keeps beyond model and optimizer: state carried between steps (the LSTM's),
  // and how a distributed run's tensors split over ranks.
  virtual LstmState* carried_state() { return nullptr; }
  virtual const CheckpointShards* checkpoint_shards() const { return nullptr; }
  // Called once the parameters are on their device and the optimizer is built.
  virtual void prepare_checkpoint_shards() {}

  // Files the run directory keeps beside the contract's (name -> bytes), e.g. a SentencePiece model.
  virtual std::map<std::string, std::string> run_files() const { return {}; }
  // The validation figure (higher is better) whose best value keeps its own checkpoint, best.pt, and
  // which train.select = best reports; "" = none.
  virtual std::string selection_figure() const { return ""; }
};

struct TaskSetup {
  const Config& config;
  torch::Device device;
  const DistributedRun& run;
  std::optional<std::string> saved_vocabulary;  // a resumed run's vocabulary
  std::string run_directory;  // where the run is (or will be) written; run_files() of a resumed run are there
};

// The task model.task names, its data read and its model built on setup.device. The caller seeds
// the generator first: the initial weights depend on train.seed alone.
std::unique_ptr<TrainingTask> make_training_task(const TaskSetup& setup);
std::unique_ptr<TrainingTask> make_language_model_task(const TaskSetup& setup);
std::unique_ptr<TrainingTask> make_supervised_training_task(const TaskSetup& setup);
std::unique_ptr<TrainingTask> make_translation_task(const TaskSetup& setup);

}  // namespace moelab
