// Sequence tagger of the BiLSTM gating study: BiLstmMoEEncoder -> linear -> one score per tag for
// every real token of a packed batch.
#pragma once
#include <torch/nn/modules/linear.h>

#include "moelab/models/bilstm_moe_encoder.h"

namespace moelab {

class SequenceTaggerImpl : public torch::nn::Module {
 public:
  SequenceTaggerImpl(const BiLstmMoEEncoderOptions& encoder_options, int64_t num_tags);

  // ids [N] packed, batch_sizes [T]; the result's `scores` are tag logits [N, num_tags].
  EncodedBatch forward(const torch::Tensor& ids, const torch::Tensor& batch_sizes);
  // Mean cross-entropy over the batch's tokens; tags [N] in packed order.
  torch::Tensor loss(const EncodedBatch& batch, const torch::Tensor& tags) const;
  std::vector<LayerCost> costs() const;

  int64_t num_tags;
  BiLstmMoEEncoder encoder{nullptr};
  torch::nn::Linear output{nullptr};
};
TORCH_MODULE(SequenceTagger);

}  // namespace moelab
