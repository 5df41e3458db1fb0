#include "moelab/models/span_extractor.h"

#include <torch/nn/utils/rnn.h>

#include <limits>

#include "moelab/util/error.h"

namespace moelab {

namespace {

// rows [B, L] of `packed` ([N, D]) as [B, L, D], zero where rows is -1.
torch::Tensor gather_padded(const torch::Tensor& packed, const torch::Tensor& rows) {
  const auto picked = packed.index_select(0, rows.clamp_min(0).reshape({-1})).view({rows.size(0), rows.size(1), -1});
  return picked * rows.ge(0).unsqueeze(2).to(picked.scalar_type());
}

SpanLogits masked_logits(const torch::Tensor& scores, const torch::Tensor& context_mask) {
  const double minus_inf = -std::numeric_limits<double>::infinity();
  SpanLogits logits;
  logits.start = scores.select(2, 0).masked_fill(context_mask.logical_not(), minus_inf);
  logits.end = scores.select(2, 1).masked_fill(context_mask.logical_not(), minus_inf);
  return logits;
}

}  // namespace

SpanExtractorImpl::SpanExtractorImpl(const SpanExtractorOptions& options_) : options(options_) {
  encoder = register_module("encoder", BiLstmMoEEncoder(options.encoder()));
  const int64_t width = encoder->output_dim();
  int64_t head_input = width;
  if (options.attention() == "bidaf") {
    attention = register_module("attention", ContextQuestionAttention(width));
    const int64_t hidden = options.encoder().hidden_dim();
    modeling = register_module(
        "modeling", torch::nn::LSTM(torch::nn::LSTMOptions(attention->output_dim(), hidden).bidirectional(true)));
    head_input = attention->output_dim() + 2 * hidden;
  } else if (options.attention() != "none") {
    fail("unknown QA attention '{}' (known: none, bidaf)", options.attention());
  }
  dropout = register_module("dropout", Dropout(options.encoder().dropout()));
  output = register_module("output", torch::nn::Linear(head_input, 2));
}

SpanOutput SpanExtractorImpl::forward(const SpanInputs& in) {
  SpanOutput out;
  out.encoded = encoder(in.ids, in.batch_sizes, in.bytes, in.features);
  const auto context_mask = in.context_rows.ge(0);
  if (!attention) {
    out.encoded.scores = output(out.encoded.features);  // [N, 2]
    out.logits = masked_logits(gather_padded(out.encoded.scores, in.context_rows), context_mask);
    return out;
  }
  namespace rnn = torch::nn::utils::rnn;
  const auto context = gather_padded(out.encoded.features, in.context_rows);
  const auto question = gather_padded(out.encoded.features, in.question_rows);
  const auto flow = attention(context, context_mask, question, in.question_rows.ge(0));  // [B, C, 4 * 2H]
  // Packed by context length, so padding never enters the modelling LSTM's states.
  const auto lengths = context_mask.sum(1).to(torch::kCPU);
  // The encoder's features are already dropped out once; the flow is built from them and is not
  // dropped again (twice at 0.5 would keep a quarter of them, scaled by 4). Only the modelling
  // LSTM's new features get their own dropout.
  auto [modeled, state] = modeling->forward_with_packed_input(rnn::pack_padded_sequence(flow, lengths, true, false));
  const auto padded = std::get<0>(rnn::pad_packed_sequence(modeled, true, 0.0, context.size(1)));  // [B, C, 2H]
  const auto scores = output(torch::cat({flow, dropout(padded)}, 2));  // [B, C, 2]
  out.logits = masked_logits(scores, context_mask);
  return out;
}

torch::Tensor SpanExtractorImpl::loss(const SpanLogits& logits, const torch::Tensor& gold_start,
                                      const torch::Tensor& gold_end) {
  namespace F = torch::nn::functional;
  return 0.5 * (F::cross_entropy(logits.start, gold_start) + F::cross_entropy(logits.end, gold_end));
}

std::vector<LayerCost> SpanExtractorImpl::costs() const {
  auto rows = encoder->costs();
  // FLOPs are per token of the input; the layers after the encoder see only the context's share.
  const double share = attention ? options.context_share() : 1.0;
  auto per_input_token = [&](double flops) { return static_cast<int64_t>(std::llround(share * flops)); };
  if (attention) {
    rows.push_back(dense_cost("context_question_attention", *attention,
                              per_input_token(static_cast<double>(
                                  attention->flops_per_context_token(options.mean_question_tokens())))));
    rows.push_back(dense_cost("modeling_bilstm", *modeling, per_input_token(static_cast<double>(lstm_flops(modeling)))));
  }
  rows.push_back(dense_cost("span_output", *output, per_input_token(2.0 * static_cast<double>(output->weight.numel()))));
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
