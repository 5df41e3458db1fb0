#include "moelab/models/sequence_tagger.h"

#include "moelab/util/error.h"

namespace moelab {

SequenceTaggerImpl::SequenceTaggerImpl(const BiLstmMoEEncoderOptions& encoder_options,
                                       const std::vector<std::string>& tags, const std::string& decoder)
    : num_tags(static_cast<int64_t>(tags.size())) {
  if (num_tags < 2) fail("a tagger needs at least 2 tags, got {}", num_tags);
  if (decoder != "softmax" && decoder != "crf") fail("model.decoder must be softmax or crf, got '{}'", decoder);
  encoder = register_module("encoder", BiLstmMoEEncoder(encoder_options));
  output = register_module("output", torch::nn::Linear(encoder->output_dim(), num_tags));
  if (decoder == "crf") crf = register_module("crf", LinearChainCrf(num_tags, iob2_constraints(tags)));
}

EncodedBatch SequenceTaggerImpl::forward(const torch::Tensor& ids, const torch::Tensor& batch_sizes,
                                         const torch::Tensor& bytes) {
  auto out = encoder(ids, batch_sizes, bytes);
  out.scores = output(out.features);
  return out;
}

torch::Tensor SequenceTaggerImpl::loss(const EncodedBatch& batch, const torch::Tensor& batch_sizes,
                                       const torch::Tensor& tags) const {
  if (crf) return crf->loss(batch.scores, batch_sizes, tags);
  return torch::nn::functional::cross_entropy(batch.scores, tags);
}

torch::Tensor SequenceTaggerImpl::predict(const EncodedBatch& batch, const torch::Tensor& batch_sizes) const {
  if (crf) return crf->decode(batch.scores, batch_sizes);
  return batch.scores.argmax(1);
}

std::vector<LayerCost> SequenceTaggerImpl::costs() const {
  auto rows = encoder->costs();
  rows.push_back(dense_cost("tag_output", *output, 2 * output->weight.numel()));
  // Each token's step of the forward algorithm (or Viterbi) combines C x C transition scores.
  if (crf) rows.push_back(dense_cost("crf", *crf, 2 * num_tags * num_tags));
  return rows;
}

}  // namespace moelab
