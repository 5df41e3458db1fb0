// A supervised task over examples (sentences, question + context pairs): its data, its model, one
// training forward pass over a batch of examples, and evaluation of a split into the figures
// summary.json reports. make_supervised_training_task (training_task.h) batches the examples and
// hands the task to the one training loop.
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moelab/config/config.h"
#include "moelab/data/task_vocabulary.h"
#include "moelab/layers/routing_stats.h"
#include "moelab/models/bilstm_moe_encoder.h"

namespace moelab {

struct TaskForward {
  torch::Tensor loss;     // the task's own loss (scalar)
  EncodedBatch encoded;   // auxiliary losses and routing statistics
  int64_t tokens = 0;     // real tokens in the batch
};

class SupervisedTask {
 public:
  virtual ~SupervisedTask() = default;
  virtual torch::nn::Module& model() = 0;
  virtual BiLstmMoEEncoder& encoder() = 0;
  // One length per training example, for batching (see length_grouped_batches).
  virtual const std::vector<int64_t>& train_lengths() const = 0;
  virtual TaskForward forward(const std::vector<int64_t>& train_examples) = 0;
  virtual bool has_split(const std::string& split) const = 0;  // "valid", "test"
  // Figures named "<split>_<figure>" (e.g. valid_entity_f1), with the model in eval mode and no
  // gradients; routing statistics go to `routing` (one accumulator per MoE layer) when given.
  virtual nlohmann::json evaluate(const std::string& split, std::vector<RoutingStatsAccumulator>* routing) = 0;
  virtual std::vector<LayerCost> costs() const = 0;
  // The main validation figure, for progress lines ("valid entity F1 84.21").
  virtual std::string headline(const nlohmann::json& figures) const = 0;
  // The validation figure (higher is better) that picks best.pt and, with train.select = best, the
  // model the summary reports.
  virtual std::string selection_figure() const = 0;
  virtual std::string describe_data() const = 0;  // one progress line
  virtual nlohmann::json data_summary() const = 0;
  const TaskVocabulary& vocabulary() const { return vocabulary_; }

 protected:
  TaskVocabulary vocabulary_;
};

// Read data and build the model. With saved_vocabulary (a resumed run), that vocabulary is used and
// no GloVe file is read: the checkpoint holds the embedding table.
std::unique_ptr<SupervisedTask> make_tagging_task(const Config& config, const std::optional<std::string>& saved_vocabulary);
std::unique_ptr<SupervisedTask> make_qa_task(const Config& config, const std::optional<std::string>& saved_vocabulary);

}  // namespace moelab
