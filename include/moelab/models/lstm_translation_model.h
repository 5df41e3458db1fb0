// A GNMT-style LSTM encoder-decoder (Wu et al. 2016) with MoE layers between LSTM layers of the
// encoder and of the decoder, as in Shazeer et al. 2017 section 5.3.
//   encoder: embedding -> bidirectional LSTM (H/2 per direction) -> LSTM -> ... (residual from the
//            third layer on); an MoE layer (with a residual) after each layer listed in moe_encoder_after.
//   decoder: embedding -> LSTM_1 -> attention over the encoder output, queried by LSTM_1's output at
//            the same step -> LSTM_l reads [LSTM_{l-1} output; attention context] for l >= 2 (residual
//            from the third layer on); MoE layers after the layers in moe_decoder_after ->
//            tanh(W [top output; context]) -> output layer tied to the target embedding.
// Attention is Luong et al. 2015's "general" (bilinear) score, h^T W m, with padded source
// positions masked out. Feeding the context from the bottom layer (not the top one, as Luong's
// input feeding does) lets every layer run over the whole target at once in training.
//
// Shape legend: S source positions, T target positions, B batch columns, E embedding width,
// H LSTM width.
#pragma once
#include "moelab/device/dropout.h"
#include <torch/arg.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/rnn.h>

#include <map>
#include <optional>
#include <vector>

#include "moelab/layers/dense_ffn.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/models/softmax_output.h"
#include "moelab/models/translation_model.h"

namespace moelab {

struct LstmTranslationOptions {
  LstmTranslationOptions(int64_t source_vocab, int64_t target_vocab, int64_t embed, int64_t hidden)
      : source_vocab_(source_vocab), target_vocab_(target_vocab), embed_(embed), hidden_(hidden) {}
  TORCH_ARG(int64_t, source_vocab);
  TORCH_ARG(int64_t, target_vocab);
  TORCH_ARG(int64_t, embed);
  /// LSTM width H (even: the bidirectional first layer has H/2 per direction); the MoE layers' D.
  TORCH_ARG(int64_t, hidden);
  TORCH_ARG(int64_t, encoder_layers) = 2;
  TORCH_ARG(int64_t, decoder_layers) = 2;
  TORCH_ARG(double, dropout) = 0.1;
  /// Dropout on the dense FFNs' hidden activations; unset: `dropout`.
  TORCH_ARG(std::optional<double>, ffn_dropout) = std::nullopt;
  /// MoE layers after these encoder / decoder LSTM layers (1-based, below the top layer).
  TORCH_ARG(std::vector<int64_t>, moe_encoder_after) = {};
  TORCH_ARG(std::vector<int64_t>, moe_decoder_after) = {};
  TORCH_ARG(std::optional<MoELayerOptions>, moe) = std::nullopt;
  /// The decoder's MoE layers, where they differ from the encoder's (a Soft MoE encoder needs a
  /// routed decoder); unset: `moe` for both.
  TORCH_ARG(std::optional<MoELayerOptions>, decoder_moe) = std::nullopt;
  /// > 0: a dense FFN of this hidden width (with a residual) in each MoE place instead: the
  /// compute-matched baseline.
  TORCH_ARG(int64_t, ffn_hidden) = 0;
  TORCH_ARG(bool, share_embeddings) = false;
  /// Source length the attention FLOPs of costs() assume.
  TORCH_ARG(int64_t, nominal_source_length) = 32;
};

class LstmTranslationModelImpl : public TranslationModelImpl {
 public:
  explicit LstmTranslationModelImpl(const LstmTranslationOptions& options);

  EncodedSource encode(const torch::Tensor& source, const torch::Tensor& source_lengths) override;
  DecoderOutput decode(const EncodedSource& encoded, const torch::Tensor& target_input,
                       const torch::Tensor& target_padding) override;
  std::unique_ptr<DecoderState> start_decoding(const EncodedSource& encoded) override;
  torch::Tensor decode_step(DecoderState& state, const torch::Tensor& tokens) override;
  torch::Tensor log_probs(const torch::Tensor& features) override;
  std::vector<LayerCost> costs() const override;
  std::vector<NamedMoELayer> moe_layers() const override;
  int64_t max_positions() const override { return 0; }
  void pretty_print(std::ostream& stream) const override;

  LstmTranslationOptions options;
  torch::nn::Embedding source_embedding{nullptr}, target_embedding{nullptr};
  torch::nn::ModuleList encoder_list{nullptr}, decoder_list{nullptr};
  std::vector<torch::nn::LSTM> encoder, decoder;
  std::map<int64_t, MoELayer> encoder_moe, decoder_moe;  // keyed by the layer they follow
  std::map<int64_t, DenseFfn> encoder_ffn, decoder_ffn;  // the dense baseline's, likewise
  torch::nn::Linear attention_weight{nullptr};  // W of the bilinear score, H -> H
  torch::nn::Linear attentional{nullptr};       // [H; H] -> E
  SoftmaxOutput head;
  Dropout dropout{nullptr};

 private:
  // Decoder layers from the bottom: x [T, B, E] embedded targets; states (one (h, c) per layer, or
  // empty for zeros) are advanced when given. padding [T*B] or undefined.
  torch::Tensor run_decoder(const torch::Tensor& x, const torch::Tensor& tokens, const torch::Tensor& padding,
                            const torch::Tensor& memory, const torch::Tensor& keys, const torch::Tensor& key_padding,
                            std::vector<std::tuple<torch::Tensor, torch::Tensor>>* states, RoutingOutput& moe_out);
};
TORCH_MODULE(LstmTranslationModel);

}  // namespace moelab
