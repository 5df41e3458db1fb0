// A decoder-only Transformer language model with MoE feed-forward sublayers (Switch, GShard, GLaM,
// ST-MoE): token embedding (+ learned positions, or RoPE inside attention) -> pre-norm blocks
//   x = x + dropout(attention(norm(x)));  x = x + dropout(ffn(norm(x)))
// where every `moe_every`-th block's ffn is an MoE layer over every position of the batch at once
// and the others are dense FFNs -> final norm -> output layer (full, tied or adaptive softmax).
// Windows are independent: no state passes from one to the next.
//
// Shape legend: T positions (<= context), B batch columns, D model width, V vocabulary.
#pragma once
#include "moelab/device/dropout.h"
#include <torch/arg.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>

#include <optional>
#include <string>
#include <vector>

#include "moelab/layers/causal_self_attention.h"
#include "moelab/layers/dense_ffn.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/layers/norm.h"
#include "moelab/models/language_model.h"
#include "moelab/models/softmax_output.h"

namespace moelab {

struct TransformerLanguageModelOptions {
  TransformerLanguageModelOptions(int64_t vocab_size, int64_t model_dim) : vocab_size_(vocab_size), model_dim_(model_dim) {}
  TORCH_ARG(int64_t, vocab_size);
  /// Width D of embeddings, attention and residual stream.
  TORCH_ARG(int64_t, model_dim);
  TORCH_ARG(int64_t, layers) = 4;
  TORCH_ARG(int64_t, heads) = 4;
  /// Longest window (learned positions exist for 0..context-1).
  TORCH_ARG(int64_t, context) = 128;
  /// "learned" (added to the embeddings) or "rope" (rotary, inside attention).
  TORCH_ARG(std::string, positions) = "learned";
  /// "layernorm" or "rmsnorm".
  TORCH_ARG(std::string, norm) = "layernorm";
  /// Hidden width of the dense FFN blocks.
  TORCH_ARG(int64_t, ffn_hidden) = 1024;
  /// Dropout on embeddings, on each sublayer's output and (unless ffn_dropout is set) in the dense
  /// FFNs' hidden activations.
  TORCH_ARG(double, dropout) = 0.1;
  /// Dropout on the dense FFNs' hidden activations; unset: `dropout`.
  TORCH_ARG(std::optional<double>, ffn_dropout) = std::nullopt;
  /// Every n-th block (n-1, 2n-1, ...) has an MoE FFN; needs moe. 0 = no MoE block.
  TORCH_ARG(int64_t, moe_every) = 1;
  TORCH_ARG(std::optional<MoELayerOptions>, moe) = std::nullopt;
  TORCH_ARG(bool, tie_weights) = true;
  TORCH_ARG(std::string, softmax) = "full";
  TORCH_ARG(std::vector<int64_t>, adaptive_cutoffs) = std::vector<int64_t>({2000, 10000});
  TORCH_ARG(AttentionKernel, attention) = AttentionKernel::kAuto;
};

struct TransformerBlockOutput {
  torch::Tensor x;  // [T, B, D]
  std::optional<MoEOutput> moe;
};

class TransformerBlockImpl : public torch::nn::Module {
 public:
  TransformerBlockImpl(const TransformerLanguageModelOptions& options, bool with_moe);
  // token_ids [T*B] for the hash router; cache extends the attention's keys and values.
  TransformerBlockOutput forward(const torch::Tensor& x, const torch::Tensor& token_ids, AttentionCache* cache);

  Norm attention_norm{nullptr};
  CausalSelfAttention attention{nullptr};
  Norm ffn_norm{nullptr};
  MoELayer moe{nullptr};
  DenseFfn dense{nullptr};
  Dropout dropout{nullptr};
};
TORCH_MODULE(TransformerBlock);

class TransformerLanguageModelImpl : public LanguageModelImpl {
 public:
  explicit TransformerLanguageModelImpl(const TransformerLanguageModelOptions& options);

  // tokens [T, B], T <= context; the state is ignored (and none returned).
  LanguageModelOutput forward(const torch::Tensor& tokens, const LstmState& state = {}) override;
  // Generation: tokens [T, B] continue the positions in `cache` (one entry per block, grown here).
  LanguageModelOutput forward_cached(const torch::Tensor& tokens, std::vector<AttentionCache>& cache);
  torch::Tensor loss(const torch::Tensor& features, const torch::Tensor& targets) override;
  torch::Tensor log_probs(const torch::Tensor& features) override;
  std::vector<LayerCost> costs() const override;
  std::vector<NamedMoELayer> moe_layers() const override;
  bool carries_state() const override { return false; }
  void pretty_print(std::ostream& stream) const override;

  TransformerLanguageModelOptions options;
  torch::nn::Embedding embedding{nullptr};
  torch::nn::Embedding positions{nullptr};  // learned positions only
  torch::nn::ModuleList block_list{nullptr};
  std::vector<TransformerBlock> blocks;
  Norm final_norm{nullptr};
  SoftmaxOutput head;
  Dropout dropout{nullptr};

 private:
  LanguageModelOutput run(const torch::Tensor& tokens, std::vector<AttentionCache>* cache);
};
TORCH_MODULE(TransformerLanguageModel);

}  // namespace moelab
