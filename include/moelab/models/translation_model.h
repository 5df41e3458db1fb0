// What every encoder-decoder translation model (the GNMT-style LSTM, the Transformer) offers
// training, evaluation and decoding: encode a padded batch of source sentences once, then either
// decode a whole teacher-forced target batch or extend hypotheses one token at a time.
//
// Sentences are columns of a [length, B] id tensor, padded at the end with the pad id; lengths count
// the real tokens (end-of-sentence included). Shape legend: S source positions, T target positions,
// B batch columns, D model width, V target vocabulary.
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

// True at the padded positions of a [L, B] batch whose columns hold lengths[b] real tokens: [L, B].
torch::Tensor padding_mask(int64_t length, const torch::Tensor& lengths);

// What the MoE layers of one pass report.
struct RoutingOutput {
  torch::Tensor aux_loss;  // scalar, weighted balancing losses summed over layers
  std::map<std::string, torch::Tensor> loss_terms;  // unweighted, summed over layers
  std::vector<RoutingStats> routing;                // one per MoE layer passed
  void add(const MoEOutput& moe);
};

struct EncodedSource {
  torch::Tensor memory;       // [S, B, D] the encoder's output
  torch::Tensor key_padding;  // [B, S] bool, true at padded source positions
  RoutingOutput moe;
};

// Incremental decoding state of a batch of hypotheses (attention caches or LSTM states).
class DecoderState {
 public:
  virtual ~DecoderState() = default;
  // Keeps hypotheses `rows` ([B'] int64 indices into the current batch), in that order: beam
  // search's reordering and its expansion of each sentence to several beams.
  virtual void select(const torch::Tensor& rows) = 0;
  virtual int64_t batch_size() const = 0;
};

struct DecoderOutput {
  torch::Tensor features;  // [T, B, D] input to the output layer
  RoutingOutput moe;
};

class TranslationModelImpl : public torch::nn::Module {
 public:
  // source [S, B], source_lengths [B] (int64, on any device).
  virtual EncodedSource encode(const torch::Tensor& source, const torch::Tensor& source_lengths) = 0;
  // Teacher forcing: target_input [T, B] (begin-of-sentence, then the target shifted right),
  // target_padding [T, B] bool.
  virtual DecoderOutput decode(const EncodedSource& encoded, const torch::Tensor& target_input,
                               const torch::Tensor& target_padding) = 0;
  // Incremental decoding: a state for the encoded batch, then one token per hypothesis at a time.
  virtual std::unique_ptr<DecoderState> start_decoding(const EncodedSource& encoded) = 0;
  // tokens [B] -> log-probabilities of the next token [B, V]; the state advances by one position.
  virtual torch::Tensor decode_step(DecoderState& state, const torch::Tensor& tokens) = 0;
  // Log-probabilities of the next token for features [N, D] -> [N, V].
  virtual torch::Tensor log_probs(const torch::Tensor& features) = 0;
  virtual std::vector<LayerCost> costs() const = 0;
  // Every MoE layer, encoder's first (bottom to top), then the decoder's, named as in named_parameters().
  virtual std::vector<NamedMoELayer> moe_layers() const = 0;
  // Longest sentence (in tokens) the model's positions cover; 0 = unlimited.
  virtual int64_t max_positions() const = 0;
  void mask_gradients(uint64_t seed, int64_t step);
};
using TranslationModelPtr = std::shared_ptr<TranslationModelImpl>;

// Mean over the real target tokens of the label-smoothed negative log-likelihood (Szegedy et al.
// 2016: (1 - eps) * NLL + eps * mean over the vocabulary of -log p); eps = 0 gives the plain NLL.
// log_probs [N, V], targets [N].
torch::Tensor label_smoothed_nll(const torch::Tensor& log_probs, const torch::Tensor& targets, double smoothing);

}  // namespace moelab
