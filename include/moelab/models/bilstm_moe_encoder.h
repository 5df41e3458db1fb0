// The encoder of the BiLSTM gating study's tagging and QA models:
//   embeddings (+ character features) -> bidirectional LSTM -> MoE layer (or a dense FFN, or nothing) -> bidirectional LSTM
// run over packed batches (see data/packed_batches.h), so padding never reaches an LSTM, the router
// statistics or a loss. The MoE layer sees every real token of the batch at once, width 2H.
//
// Shape legend: N real tokens in the batch (packed order), H LSTM width per direction.
#pragma once
#include "moelab/device/dropout.h"
#include <torch/arg.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/rnn.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "moelab/layers/char_word_encoder.h"
#include "moelab/layers/dense_ffn.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/models/layer_cost.h"

namespace moelab {

struct BiLstmMoEEncoderOptions {
  BiLstmMoEEncoderOptions(int64_t vocab_size, int64_t embed_dim, int64_t hidden_dim)
      : vocab_size_(vocab_size), embed_dim_(embed_dim), hidden_dim_(hidden_dim) {}
  TORCH_ARG(int64_t, vocab_size);
  TORCH_ARG(int64_t, embed_dim);
  /// Width H of each LSTM direction; the MoE layer is 2H wide.
  TORCH_ARG(int64_t, hidden_dim);
  /// Dropout on embeddings, on the middle layer's output and on the encoder's output.
  TORCH_ARG(double, dropout) = 0.5;
  /// Add the middle layer's input to its output.
  TORCH_ARG(bool, residual) = false;
  /// "none", "moe" or "dense" (FFN of width k * expert_hidden).
  TORCH_ARG(std::string, middle) = "moe";
  TORCH_ARG(std::optional<MoELayerOptions>, moe) = std::nullopt;
  /// Keep the embedding table fixed (pretrained vectors used as they are).
  TORCH_ARG(bool, freeze_embeddings) = false;
  /// Features from each word's spelling, concatenated to its embedding.
  TORCH_ARG(std::optional<CharWordEncoderOptions>, chars) = std::nullopt;
  /// Width of extra per-token features the task supplies (e.g. QA's word overlap), concatenated
  /// after the embedding and the character features; 0 = none.
  TORCH_ARG(int64_t, token_features) = 0;
};

struct EncodedBatch {
  torch::Tensor features;  // [N, 2H], packed order
  torch::Tensor scores;    // the head's output per token, set by the model wrapping the encoder
  torch::Tensor aux_loss;  // scalar (zero without an MoE layer)
  std::map<std::string, torch::Tensor> loss_terms;
  std::vector<RoutingStats> routing;  // one per MoE layer
};

class BiLstmMoEEncoderImpl : public torch::nn::Module {
 public:
  explicit BiLstmMoEEncoderImpl(const BiLstmMoEEncoderOptions& options);
  void reset();

  // ids [N] int64 in packed order; batch_sizes [T] int64 on the CPU (see PackedBatch); bytes [N, L]
  // the same tokens' original spelling (word_bytes), required with character features; features
  // [N, token_features] float, required when token_features > 0.
  EncodedBatch forward(const torch::Tensor& ids, const torch::Tensor& batch_sizes, const torch::Tensor& bytes = {},
                       const torch::Tensor& features = {});
  // Replaces the embedding table ([vocab, embed], e.g. from GloVe).
  void set_embeddings(const torch::Tensor& matrix);
  int64_t output_dim() const { return 2 * options.hidden_dim(); }
  std::vector<LayerCost> costs() const;
  void mask_gradients(uint64_t seed, int64_t step);

  BiLstmMoEEncoderOptions options;
  torch::nn::Embedding embedding{nullptr};
  CharWordEncoder chars{nullptr};  // null without character features
  torch::nn::LSTM first{nullptr};
  MoELayer moe{nullptr};
  DenseFfn dense{nullptr};
  torch::nn::LSTM second{nullptr};
  Dropout dropout{nullptr};
};
TORCH_MODULE(BiLstmMoEEncoder);

}  // namespace moelab
