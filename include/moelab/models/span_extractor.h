// Extractive QA model of the BiLSTM gating study: question and context are concatenated
// (question, separator, context) and encoded by one BiLstmMoEEncoder; a linear head gives every
// token a start and an end score, of which only context positions count.
#pragma once
#include <torch/nn/modules/linear.h>

#include "moelab/models/bilstm_moe_encoder.h"

namespace moelab {

struct SpanLogits {
  torch::Tensor start;  // [B, C]: context positions; -inf past a context's end
  torch::Tensor end;    // [B, C]
};

class SpanExtractorImpl : public torch::nn::Module {
 public:
  explicit SpanExtractorImpl(const BiLstmMoEEncoderOptions& encoder_options);

  // ids [N] packed, batch_sizes [T]; the result's `scores` are [N, 2] (start, end) per token.
  EncodedBatch forward(const torch::Tensor& ids, const torch::Tensor& batch_sizes);
  // Gathers the context positions: context_rows [B, C] holds each context token's row in the
  // packed batch, -1 past the context's end.
  static SpanLogits span_logits(const EncodedBatch& batch, const torch::Tensor& context_rows);
  // Mean of the start and end cross-entropies; gold positions [B] index context tokens.
  static torch::Tensor loss(const SpanLogits& logits, const torch::Tensor& gold_start, const torch::Tensor& gold_end);
  std::vector<LayerCost> costs() const;

  BiLstmMoEEncoder encoder{nullptr};
  torch::nn::Linear output{nullptr};
};
TORCH_MODULE(SpanExtractor);

// The best span per row with start <= end < start + max_length (max_length <= 0: no limit),
// maximising start + end log-probability. Returns [B, 2] int64 (start, end).
torch::Tensor best_spans(const SpanLogits& logits, int64_t max_length);

}  // namespace moelab
