#include "moelab/models/span_extractor.h"

#include <limits>


namespace moelab {

SpanExtractorImpl::SpanExtractorImpl(const BiLstmMoEEncoderOptions& encoder_options) {
  encoder = register_module("encoder", BiLstmMoEEncoder(encoder_options));
  output = register_module("output", torch::nn::Linear(encoder->output_dim(), 2));
}

EncodedBatch SpanExtractorImpl::forward(const torch::Tensor& ids, const torch::Tensor& batch_sizes) {
  auto out = encoder(ids, batch_sizes);
  out.scores = output(out.features);
  return out;
}

SpanLogits SpanExtractorImpl::span_logits(const EncodedBatch& batch, const torch::Tensor& context_rows) {
  const auto valid = context_rows.ge(0);
  const auto rows = context_rows.clamp_min(0).reshape({-1});
  const auto picked = batch.scores.index_select(0, rows).view({context_rows.size(0), context_rows.size(1), 2});
  const double minus_inf = -std::numeric_limits<double>::infinity();
  SpanLogits logits;
  logits.start = picked.select(2, 0).masked_fill(valid.logical_not(), minus_inf);
  logits.end = picked.select(2, 1).masked_fill(valid.logical_not(), minus_inf);
  return logits;
}

torch::Tensor SpanExtractorImpl::loss(const SpanLogits& logits, const torch::Tensor& gold_start,
                                      const torch::Tensor& gold_end) {
  namespace F = torch::nn::functional;
  return 0.5 * (F::cross_entropy(logits.start, gold_start) + F::cross_entropy(logits.end, gold_end));
}

std::vector<LayerCost> SpanExtractorImpl::costs() const {
  auto rows = encoder->costs();
  rows.push_back(dense_cost("span_output", *output, 2 * output->weight.numel()));
  return rows;
}

torch::Tensor best_spans(const SpanLogits& logits, int64_t max_length) {
  torch::NoGradGuard no_grad;
  const auto start = torch::log_softmax(logits.start, 1);  // [B, C]
  const auto end = torch::log_softmax(logits.end, 1);
  const int64_t batch = start.size(0), length = start.size(1);
  // score[b, i, j] = start[b, i] + end[b, j], allowed where i <= j < i + max_length.
  auto scores = start.unsqueeze(2) + end.unsqueeze(1);
  const auto flags = torch::TensorOptions().dtype(torch::kBool).device(start.device());
  auto allowed = torch::ones({length, length}, flags).triu();
  if (max_length > 0 && max_length < length) allowed = allowed.logical_and(torch::ones({length, length}, flags).tril(max_length - 1));
  scores = scores.masked_fill(allowed.logical_not().unsqueeze(0), -std::numeric_limits<double>::infinity());
  const auto best = scores.view({batch, -1}).argmax(1);
  return torch::stack({best.div(length, "floor"), best.remainder(length)}, 1);
}

}  // namespace moelab
