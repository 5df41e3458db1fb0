// What every language-model backbone (the LSTM of Shazeer et al. 2017, the Transformer) offers the
// trainer, evaluation, generation and upcycling: tokens in, features out, a loss over them, their
// MoE layers and costs. A backbone with no recurrent state ignores the state and returns none.
//
// Shape legend: T time steps, B batch columns, D' width of the output layer's input, V vocabulary.
#pragma once
#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moelab/layers/moe_layer.h"
#include "moelab/layers/routing_stats.h"
#include "moelab/models/layer_cost.h"

namespace moelab {

// State carried from one window to the next: the (h, c) pairs of every LSTM stack. Undefined or
// absent tensors mean "start from zeros".
struct LstmState {
  std::vector<torch::Tensor> tensors;  // [h_before, c_before, h_after, c_after], each [layers, B, D]
  LstmState detached() const;
  bool empty() const { return tensors.empty(); }
  // Batch columns [first, first + count) of every tensor (an empty state stays empty), and the
  // reverse: states of consecutive column ranges joined along the batch.
  LstmState columns(int64_t first, int64_t count) const;
  static LstmState concatenated(const std::vector<LstmState>& parts);
};

struct LanguageModelOutput {
  torch::Tensor features;  // [T, B, D'] input to the output layer
  LstmState state;         // empty for a backbone without recurrent state
  torch::Tensor aux_loss;  // scalar (zero without an MoE layer)
  std::map<std::string, torch::Tensor> loss_terms;
  std::vector<RoutingStats> routing;  // one per MoE layer, in moe_layers() order
};

class LanguageModelImpl : public torch::nn::Module {
 public:
  virtual LanguageModelOutput forward(const torch::Tensor& tokens, const LstmState& state) = 0;  // tokens [T, B]
  // Mean negative log-likelihood (nats per token) of targets [T, B] given features.
  virtual torch::Tensor loss(const torch::Tensor& features, const torch::Tensor& targets) = 0;
  // Log-probabilities over the vocabulary, [T*B, V].
  virtual torch::Tensor log_probs(const torch::Tensor& features) = 0;
  virtual std::vector<LayerCost> costs() const = 0;
  // Every MoE layer, bottom to top, named as in named_parameters() (e.g. "moe", "blocks.3.moe").
  virtual std::vector<NamedMoELayer> moe_layers() const = 0;
  // True when the state returned by forward() must be passed to the next window (the LSTM).
  virtual bool carries_state() const = 0;
  // Lets the expert banks drop gradients they must not apply at this step (see ExpertBank).
  void mask_gradients(uint64_t seed, int64_t step);
  int64_t num_moe_layers() const { return static_cast<int64_t>(moe_layers().size()); }
};
using LanguageModelPtr = std::shared_ptr<LanguageModelImpl>;

}  // namespace moelab
