// Sequence tagger of the BiLSTM gating study: BiLstmMoEEncoder -> linear -> one score per tag for
// every real token of a packed batch, then either each token's best tag (softmax) or the best tag
// sequence of a linear-chain CRF with the IOB2 constraints (Lample et al. 2016).
#pragma once
#include <torch/nn/modules/linear.h>

#include <string>
#include <vector>

#include "moelab/layers/linear_chain_crf.h"
#include "moelab/models/bilstm_moe_encoder.h"

namespace moelab {

class SequenceTaggerImpl : public torch::nn::Module {
 public:
  // decoder: "softmax" or "crf" (constrained by the IOB2 rules read from the tag names).
  SequenceTaggerImpl(const BiLstmMoEEncoderOptions& encoder_options, const std::vector<std::string>& tags,
                     const std::string& decoder = "softmax");

  // ids [N] packed, batch_sizes [T], bytes [N, L] the tokens' spelling (with character features);
  // the result's `scores` are tag scores [N, num_tags].
  EncodedBatch forward(const torch::Tensor& ids, const torch::Tensor& batch_sizes, const torch::Tensor& bytes = {});
  // Per token: cross-entropy (softmax) or the sentences' negative log-likelihood (CRF), averaged
  // over the batch's tokens; tags [N] in packed order.
  torch::Tensor loss(const EncodedBatch& batch, const torch::Tensor& batch_sizes, const torch::Tensor& tags) const;
  // [N] int64: the predicted tag of every token, packed.
  torch::Tensor predict(const EncodedBatch& batch, const torch::Tensor& batch_sizes) const;
  // Whether a gold tag sequence is one the decoder can produce (always, for softmax).
  bool can_produce(const std::vector<int64_t>& tags) const { return !crf || crf->allows(tags); }
  std::vector<LayerCost> costs() const;

  int64_t num_tags;
  BiLstmMoEEncoder encoder{nullptr};
  torch::nn::Linear output{nullptr};
  LinearChainCrf crf{nullptr};  // null with the softmax decoder
};
TORCH_MODULE(SequenceTagger);

}  // namespace moelab
