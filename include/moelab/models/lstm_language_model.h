// The LSTM language model of Shazeer et al. 2017 (section 5, appendix C):
//   embedding -> LSTM x layers_before -> MoE (every position of the batch at once, optional
//   residual) -> LSTM x layers_after -> output projection + softmax (full or adaptive).
// The middle layer can also be a dense FFN (the compute-matched baseline) or absent (plain LSTM).
//
// Shape legend: T time steps, B batch columns, D hidden width, V vocabulary, E experts.
#pragma once
#include <torch/arg.h>
#include <torch/nn/modules/adaptive.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/rnn.h>

#include <optional>
#include <string>
#include <vector>

#include "moelab/layers/dense_ffn.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/models/layer_cost.h"

namespace moelab {

struct LstmLanguageModelOptions {
  LstmLanguageModelOptions(int64_t vocab_size, int64_t embed_dim, int64_t hidden_dim)
      : vocab_size_(vocab_size), embed_dim_(embed_dim), hidden_dim_(hidden_dim) {}
  /// Vocabulary size V.
  TORCH_ARG(int64_t, vocab_size);
  /// Word embedding width.
  TORCH_ARG(int64_t, embed_dim);
  /// LSTM width D, also the MoE layer's width.
  TORCH_ARG(int64_t, hidden_dim);
  /// LSTM layers below the middle layer.
  TORCH_ARG(int64_t, layers_before) = 1;
  /// LSTM layers above the middle layer.
  TORCH_ARG(int64_t, layers_after) = 1;
  /// Dropout on embeddings, on the middle layer's output, and before the softmax.
  TORCH_ARG(double, dropout) = 0.1;
  /// Add the middle layer's input to its output.
  TORCH_ARG(bool, residual) = true;
  /// Share the input embedding with the output projection (adds a D -> embed projection if needed).
  TORCH_ARG(bool, tie_weights) = false;
  /// "full" or "adaptive" (LibTorch's AdaptiveLogSoftmaxWithLoss).
  TORCH_ARG(std::string, softmax) = "full";
  /// Adaptive softmax cluster boundaries; cutoffs >= V are dropped.
  TORCH_ARG(std::vector<int64_t>, adaptive_cutoffs) = std::vector<int64_t>({2000, 10000});
  /// "none", "moe" or "dense".
  TORCH_ARG(std::string, middle) = "moe";
  /// The MoE layer (also sets the dense baseline's width k * expert_hidden).
  TORCH_ARG(std::optional<MoELayerOptions>, moe) = std::nullopt;
};

// The (h, c) pairs of every LSTM stack; undefined tensors mean "start from zeros".
struct LstmState {
  std::vector<torch::Tensor> tensors;  // [h_before, c_before, h_after, c_after], each [layers, B, D]
  LstmState detached() const;
  bool empty() const { return tensors.empty(); }
};

struct LanguageModelOutput {
  torch::Tensor features;  // [T, B, D'] input to the output layer
  LstmState state;
  torch::Tensor aux_loss;  // scalar (zero without an MoE layer)
  std::map<std::string, torch::Tensor> loss_terms;
  std::vector<RoutingStats> routing;  // one per MoE layer
};


class LstmLanguageModelImpl : public torch::nn::Module {
 public:
  explicit LstmLanguageModelImpl(const LstmLanguageModelOptions& options);
  void reset();

  LanguageModelOutput forward(const torch::Tensor& tokens, const LstmState& state = {});  // tokens [T, B]
  // Mean negative log-likelihood (nats per token) of targets [T, B] given features.
  torch::Tensor loss(const torch::Tensor& features, const torch::Tensor& targets);
  // Log-probabilities over the vocabulary, [T*B, V].
  torch::Tensor log_probs(const torch::Tensor& features);

  std::vector<LayerCost> costs() const;
  // Lets the expert banks drop gradients they must not apply at this step (see ExpertBank).
  void mask_gradients(uint64_t seed, int64_t step);
  int64_t num_moe_layers() const { return moe ? 1 : 0; }
  void pretty_print(std::ostream& stream) const override;

 private:
  torch::Tensor logits(const torch::Tensor& flat);  // [N, D'] -> [N, V], full softmax only

 public:
  LstmLanguageModelOptions options;
  torch::nn::Embedding embedding{nullptr};
  torch::nn::LSTM lstm_before{nullptr};
  MoELayer moe{nullptr};
  DenseFfn dense{nullptr};
  torch::nn::LSTM lstm_after{nullptr};
  torch::nn::Linear tie_projection{nullptr};  // D -> embed, only when tied and widths differ
  torch::nn::Linear output{nullptr};          // full softmax, untied
  torch::Tensor output_bias;                  // full softmax, tied to the embedding: [V]
  torch::nn::AdaptiveLogSoftmaxWithLoss adaptive{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(LstmLanguageModel);

}  // namespace moelab
