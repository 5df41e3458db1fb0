// The output layer of a language model, shared by the LSTM and the Transformer: a full softmax with
// its own weights or tied to the input embedding (plus a bias), or LibTorch's adaptive softmax.
//
// Shape legend: N positions, D' input width, V vocabulary.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/adaptive.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <string>
#include <vector>

#include "moelab/models/layer_cost.h"

namespace moelab {

struct SoftmaxOutputOptions {
  int64_t width = 0;       // D'; must equal the embedding width when tied
  int64_t vocab_size = 0;  // V
  std::string kind = "full";  // "full" or "adaptive"
  std::vector<int64_t> adaptive_cutoffs;  // cutoffs >= V are dropped
  bool tied = false;
};

class SoftmaxOutput {
 public:
  SoftmaxOutput() = default;
  // Registers its parameters on `owner` as "output" (full), "output_bias" (full, tied) or
  // "adaptive". Throws Error for an unknown kind, bad cutoffs, or tying with the adaptive softmax.
  SoftmaxOutput(torch::nn::Module& owner, const SoftmaxOutputOptions& options, torch::nn::Embedding embedding);

  torch::Tensor loss(const torch::Tensor& flat, const torch::Tensor& targets);  // [N, D'], [N] -> mean nats
  torch::Tensor log_probs(const torch::Tensor& flat);                           // [N, D'] -> [N, V]
  // Rows for costs(); a tied weight is counted once, under the embedding.
  std::vector<LayerCost> costs() const;

  torch::nn::Linear output{nullptr};  // full softmax, untied
  torch::Tensor output_bias;          // full softmax, tied to the embedding: [V]
  torch::nn::AdaptiveLogSoftmaxWithLoss adaptive{nullptr};

 private:
  torch::Tensor logits(const torch::Tensor& flat);  // full softmax only
  torch::nn::Embedding embedding_{nullptr};
};

}  // namespace moelab
