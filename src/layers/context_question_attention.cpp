#include "moelab/layers/context_question_attention.h"

#include <cmath>

#include "moelab/util/error.h"

namespace moelab {

namespace {

// Finite, so a softmax over a row that is all padding (a padded context position's row) gives
// harmless numbers instead of NaN; far below any real score in float32 and bfloat16 alike.
constexpr double kMasked = -1e30;

}  // namespace

ContextQuestionAttentionImpl::ContextQuestionAttentionImpl(int64_t dim_) : dim(dim_) {
  if (dim < 1) fail("context-question attention needs a width >= 1, got {}", dim);
  const double bound = 1.0 / std::sqrt(static_cast<double>(dim));
  w_context = register_parameter("w_context", torch::empty({dim}).uniform_(-bound, bound));
  w_question = register_parameter("w_question", torch::empty({dim}).uniform_(-bound, bound));
  w_product = register_parameter("w_product", torch::empty({dim}).uniform_(-bound, bound));
}

torch::Tensor ContextQuestionAttentionImpl::similarity(const torch::Tensor& context, const torch::Tensor& question) const {
  // The trilinear score split into its three parts, so no [B, C, Q, 3D] tensor is ever built.
  const auto by_context = context.matmul(w_context).unsqueeze(2);    // [B, C, 1]
  const auto by_question = question.matmul(w_question).unsqueeze(1);  // [B, 1, Q]
  const auto product = (context * w_product).matmul(question.transpose(1, 2));  // [B, C, Q]
  return product + by_context + by_question;
}

torch::Tensor ContextQuestionAttentionImpl::forward(const torch::Tensor& context, const torch::Tensor& context_mask,
                                                    const torch::Tensor& question, const torch::Tensor& question_mask) {
  TORCH_CHECK(context.dim() == 3 && question.dim() == 3 && context.size(2) == dim && question.size(2) == dim,
              "context-question attention expects [B, C, ", dim, "] and [B, Q, ", dim, "], got ", context.sizes(),
              " and ", question.sizes());
  const auto scores = similarity(context, question).masked_fill(question_mask.logical_not().unsqueeze(1), kMasked);
  const auto question_read = torch::softmax(scores, 2).matmul(question);  // [B, C, D]
  // Each context token's best match anywhere in the question; padded context positions take no part.
  const auto relevance = std::get<0>(scores.max(2)).masked_fill(context_mask.logical_not(), kMasked);  // [B, C]
  const auto summary = torch::softmax(relevance, 1).unsqueeze(1).matmul(context);  // [B, 1, D]
  return torch::cat({context, question_read, context * question_read, context * summary}, 2);
}

int64_t ContextQuestionAttentionImpl::flops_per_context_token(double question_tokens) const {
  // Similarity product and the question read: two D-wide dot products per question token; the
  // linear terms and the summary: three more D-wide ones.
  return static_cast<int64_t>(std::llround(2.0 * (2.0 * question_tokens + 3.0) * static_cast<double>(dim)));
}

}  // namespace moelab
