// A Transformer encoder-decoder for translation (Vaswani et al. 2017, pre-norm) whose feed-forward
// sublayers may be MoE layers, in the encoder and the decoder alike (GShard: every other block).
//   encoder block: x = x + drop(self_attention(norm(x)));  x = x + drop(ffn(norm(x)))
//   decoder block: x = x + drop(causal_self_attention(norm(x)));
//                  x = x + drop(cross_attention(norm(x), encoder output));  x = x + drop(ffn(norm(x)))
// The FFN (dense or MoE) sees real tokens only; the target embedding is tied to the output layer.
//
// Shape legend: S source positions, T target positions, B batch columns, D model width.
#pragma once
#include "moelab/device/dropout.h"
#include <torch/arg.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>

#include <optional>
#include <string>
#include <vector>

#include "moelab/layers/attention.h"
#include "moelab/layers/causal_self_attention.h"
#include "moelab/layers/dense_ffn.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/layers/norm.h"
#include "moelab/models/softmax_output.h"
#include "moelab/models/translation_model.h"

namespace moelab {

struct TransformerTranslationOptions {
  TransformerTranslationOptions(int64_t source_vocab, int64_t target_vocab, int64_t model_dim)
      : source_vocab_(source_vocab), target_vocab_(target_vocab), model_dim_(model_dim) {}
  TORCH_ARG(int64_t, source_vocab);
  TORCH_ARG(int64_t, target_vocab);
  TORCH_ARG(int64_t, model_dim);
  TORCH_ARG(int64_t, encoder_layers) = 3;
  TORCH_ARG(int64_t, decoder_layers) = 3;
  TORCH_ARG(int64_t, heads) = 4;
  /// Longest sentence in tokens (learned positions exist for 0..context-1).
  TORCH_ARG(int64_t, context) = 128;
  /// "learned" or "rope" (rotary, in the self-attentions).
  TORCH_ARG(std::string, positions) = "learned";
  TORCH_ARG(std::string, norm) = "layernorm";
  /// Hidden width of the dense FFN blocks.
  TORCH_ARG(int64_t, ffn_hidden) = 1024;
  TORCH_ARG(double, dropout) = 0.1;
  /// Dropout on the dense FFNs' hidden activations; unset: `dropout`.
  TORCH_ARG(std::optional<double>, ffn_dropout) = std::nullopt;
  /// Every n-th block of the encoder and of the decoder has an MoE FFN; 0 = none.
  TORCH_ARG(int64_t, moe_every) = 2;
  TORCH_ARG(std::optional<MoELayerOptions>, moe) = std::nullopt;
  /// The decoder's MoE layers, where they differ from the encoder's (a Soft MoE encoder needs a
  /// routed decoder); unset: `moe` for both.
  TORCH_ARG(std::optional<MoELayerOptions>, decoder_moe) = std::nullopt;
  /// Share the source and target embeddings (a joint subword vocabulary).
  TORCH_ARG(bool, share_embeddings) = false;
  TORCH_ARG(AttentionKernel, attention) = AttentionKernel::kAuto;
};

// The FFN sublayer of a block: dense, or an MoE layer over the batch's real tokens.
struct FeedForwardResult {
  torch::Tensor y;  // [N, D]
  std::optional<MoEOutput> moe;
};

class TransformerEncoderBlockImpl : public torch::nn::Module {
 public:
  TransformerEncoderBlockImpl(const TransformerTranslationOptions& options, bool with_moe);
  // x [S, B, D]; token_ids [S*B]; key_padding [B, S].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& token_ids, const torch::Tensor& key_padding,
                        RoutingOutput& moe_out);

  Norm attention_norm{nullptr};
  MultiHeadAttention attention{nullptr};
  Norm ffn_norm{nullptr};
  MoELayer moe{nullptr};
  DenseFfn dense{nullptr};
  Dropout dropout{nullptr};
};
TORCH_MODULE(TransformerEncoderBlock);

class TransformerDecoderBlockImpl : public torch::nn::Module {
 public:
  TransformerDecoderBlockImpl(const TransformerTranslationOptions& options, bool with_moe);
  // x [T, B, D]; token_ids [T*B]; padding [T*B] bool or undefined; cache extends the self-attention.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& token_ids, const torch::Tensor& padding,
                        const AttentionMemory& memory, AttentionCache* cache, RoutingOutput& moe_out);

  Norm attention_norm{nullptr};
  CausalSelfAttention attention{nullptr};
  Norm cross_norm{nullptr};
  MultiHeadAttention cross_attention{nullptr};
  Norm ffn_norm{nullptr};
  MoELayer moe{nullptr};
  DenseFfn dense{nullptr};
  Dropout dropout{nullptr};
};
TORCH_MODULE(TransformerDecoderBlock);

class TransformerTranslationModelImpl : public TranslationModelImpl {
 public:
  explicit TransformerTranslationModelImpl(const TransformerTranslationOptions& options);

  EncodedSource encode(const torch::Tensor& source, const torch::Tensor& source_lengths) override;
  DecoderOutput decode(const EncodedSource& encoded, const torch::Tensor& target_input,
                       const torch::Tensor& target_padding) override;
  std::unique_ptr<DecoderState> start_decoding(const EncodedSource& encoded) override;
  torch::Tensor decode_step(DecoderState& state, const torch::Tensor& tokens) override;
  torch::Tensor log_probs(const torch::Tensor& features) override;
  std::vector<LayerCost> costs() const override;
  std::vector<NamedMoELayer> moe_layers() const override;
  int64_t max_positions() const override { return positions_learned() ? options.context() : 0; }
  void pretty_print(std::ostream& stream) const override;

  TransformerTranslationOptions options;
  torch::nn::Embedding source_embedding{nullptr};
  torch::nn::Embedding target_embedding{nullptr};  // the source's when shared
  torch::nn::Embedding source_positions{nullptr}, target_positions{nullptr};  // learned positions only
  torch::nn::ModuleList encoder_list{nullptr}, decoder_list{nullptr};
  std::vector<TransformerEncoderBlock> encoder;
  std::vector<TransformerDecoderBlock> decoder;
  Norm encoder_norm{nullptr}, decoder_norm{nullptr};
  SoftmaxOutput head;
  Dropout dropout{nullptr};

 private:
  bool positions_learned() const { return options.positions() == "learned"; }
  // Embedded target tokens [T, B] at positions first..first+T-1 -> [T, B, D].
  torch::Tensor embed_target(const torch::Tensor& tokens, int64_t first);
  torch::Tensor run_decoder(torch::Tensor x, const torch::Tensor& tokens, const torch::Tensor& padding,
                            const std::vector<AttentionMemory>& memories, std::vector<AttentionCache>* caches,
                            RoutingOutput& moe_out);
  std::vector<AttentionMemory> project_memories(const EncodedSource& encoded);
};
TORCH_MODULE(TransformerTranslationModel);

}  // namespace moelab
