// The LSTM language model of Shazeer et al. 2017 (section 5, appendix C):
//   embedding -> LSTM x layers_before -> MoE (every position of the batch at once, optional
//   residual) -> LSTM x layers_after -> output projection + softmax (full or adaptive).
// The middle layer can also be a dense FFN (the compute-matched baseline "MoE-1-Wide"), a deeper
// dense stack ("MoE-1-Deep"), or absent (plain LSTM). middle_norm puts a LayerNorm before the
// middle layer (inside the residual branch) or after the residual sum.
//
// Shape legend: T time steps, B batch columns, D hidden width, V vocabulary, E experts.
#pragma once
#include "moelab/device/dropout.h"
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
#include "moelab/layers/norm.h"
#include "moelab/models/language_model.h"
#include "moelab/models/layer_cost.h"
#include "moelab/models/softmax_output.h"

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
  /// "none", "moe", "dense" (one hidden layer of k * expert_hidden) or "deep" (a stack of deep_layers).
  TORCH_ARG(std::string, middle) = "moe";
  /// "none", "pre" (LayerNorm on the middle layer's input) or "post" (LayerNorm after the residual sum).
  TORCH_ARG(std::string, middle_norm) = "none";
  /// "deep": ReLU hidden layers of the stack.
  TORCH_ARG(int64_t, deep_layers) = 4;
  /// "deep": their width; 0 = the width at which the stack costs the "dense" block's FLOPs per token.
  TORCH_ARG(int64_t, deep_hidden) = 0;
  /// The MoE layer (also sets the dense baseline's width k * expert_hidden).
  TORCH_ARG(std::optional<MoELayerOptions>, moe) = std::nullopt;
};

class LstmLanguageModelImpl : public LanguageModelImpl {
 public:
  explicit LstmLanguageModelImpl(const LstmLanguageModelOptions& options);
  void reset();

  LanguageModelOutput forward(const torch::Tensor& tokens, const LstmState& state = {}) override;  // tokens [T, B]
  torch::Tensor loss(const torch::Tensor& features, const torch::Tensor& targets) override;
  torch::Tensor log_probs(const torch::Tensor& features) override;
  std::vector<LayerCost> costs() const override;
  std::vector<NamedMoELayer> moe_layers() const override;
  bool carries_state() const override { return true; }
  void pretty_print(std::ostream& stream) const override;

  LstmLanguageModelOptions options;
  torch::nn::Embedding embedding{nullptr};
  torch::nn::LSTM lstm_before{nullptr};
  MoELayer moe{nullptr};
  DenseFfn dense{nullptr};          // "dense" and "deep"
  Norm middle_norm{nullptr};        // "pre" or "post"
  torch::nn::LSTM lstm_after{nullptr};
  torch::nn::Linear tie_projection{nullptr};  // D -> embed, only when tied and widths differ
  SoftmaxOutput head;                         // "output", "output_bias" or "adaptive"
  Dropout dropout{nullptr};
};
TORCH_MODULE(LstmLanguageModel);

}  // namespace moelab
