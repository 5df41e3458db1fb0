#include "moelab/models/sequence_tagger.h"

#include "moelab/util/error.h"

namespace moelab {

SequenceTaggerImpl::SequenceTaggerImpl(const BiLstmMoEEncoderOptions& encoder_options, int64_t num_tags_)
    : num_tags(num_tags_) {
  if (num_tags < 2) fail("a tagger needs at least 2 tags, got {}", num_tags);
  encoder = register_module("encoder", BiLstmMoEEncoder(encoder_options));
  output = register_module("output", torch::nn::Linear(encoder->output_dim(), num_tags));
}

EncodedBatch SequenceTaggerImpl::forward(const torch::Tensor& ids, const torch::Tensor& batch_sizes) {
  auto out = encoder(ids, batch_sizes);
  out.scores = output(out.features);
  return out;
}

torch::Tensor SequenceTaggerImpl::loss(const EncodedBatch& batch, const torch::Tensor& tags) const {
  return torch::nn::functional::cross_entropy(batch.scores, tags);
}

std::vector<LayerCost> SequenceTaggerImpl::costs() const {
  auto rows = encoder->costs();
  rows.push_back(dense_cost("tag_output", *output, 2 * output->weight.numel()));
  return rows;
}

}  // namespace moelab
