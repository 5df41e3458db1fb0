// Extractive QA model of the BiLSTM gating study: question and context are concatenated
// (question, separator, context) and encoded by one BiLstmMoEEncoder. Then either a linear head
// gives every context token a start and an end score ("none"), or the context and question
// halves of the encoding meet in BiDAF's attention flow and a modelling BiLSTM before that head
// ("bidaf", Seo et al. 2017).
//
// Shape legend: N real tokens of the packed batch, B questions, C / Q the batch's longest context /
// question.
#pragma once
#include "moelab/device/dropout.h"
#include <torch/arg.h>
#include <torch/nn/modules/linear.h>

#include "moelab/layers/context_question_attention.h"
#include "moelab/models/bilstm_moe_encoder.h"

namespace moelab {

struct SpanExtractorOptions {
  explicit SpanExtractorOptions(BiLstmMoEEncoderOptions encoder) : encoder_(std::move(encoder)) {}
  TORCH_ARG(BiLstmMoEEncoderOptions, encoder);
  /// "none" or "bidaf" (see above).
  TORCH_ARG(std::string, attention) = "none";
  /// Mean question tokens and the context's share of all tokens, only for the FLOPs count (the
  /// task measures both on its training questions).
  TORCH_ARG(double, mean_question_tokens) = 10.0;
  TORCH_ARG(double, context_share) = 0.9;
};

struct SpanInputs {
  torch::Tensor ids, batch_sizes, bytes;  // as BiLstmMoEEncoder::forward takes them
  torch::Tensor context_rows;   // [B, C] each context token's row in the packed batch, -1 past its end
  torch::Tensor question_rows;  // [B, Q] the same for the question's tokens
  torch::Tensor features;       // [N, F] per-token features (model.qa_word_overlap), or undefined
};

struct SpanLogits {
  torch::Tensor start;  // [B, C]: context positions; -inf past a context's end
  torch::Tensor end;    // [B, C]
};

struct SpanOutput {
  EncodedBatch encoded;  // the encoder's features, routing and auxiliary loss
  SpanLogits logits;
};

class SpanExtractorImpl : public torch::nn::Module {
 public:
  explicit SpanExtractorImpl(const SpanExtractorOptions& options);

  SpanOutput forward(const SpanInputs& inputs);
  // Mean of the start and end cross-entropies; gold positions [B] index context tokens.
  static torch::Tensor loss(const SpanLogits& logits, const torch::Tensor& gold_start, const torch::Tensor& gold_end);
  std::vector<LayerCost> costs() const;

  SpanExtractorOptions options;
  BiLstmMoEEncoder encoder{nullptr};
  ContextQuestionAttention attention{nullptr};  // null without "bidaf"
  torch::nn::LSTM modeling{nullptr};            // null without "bidaf"
  Dropout dropout{nullptr};
  torch::nn::Linear output{nullptr};
};
TORCH_MODULE(SpanExtractor);

// The best span per row with start <= end < start + max_length (max_length <= 0: no limit),
// maximising start + end log-probability. Returns [B, 2] int64 (start, end).
torch::Tensor best_spans(const SpanLogits& logits, int64_t max_length);

}  // namespace moelab
