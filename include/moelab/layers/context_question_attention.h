// Attention flow between a context and its question (BiDAF, Seo et al. 2017): every context token
// learns which question tokens concern it (context-to-question), and the whole question picks the
// context tokens most relevant to any of its words (question-to-context). A reader that only
// concatenates question and context must carry that matching through its LSTM states; this layer
// makes it one similarity matrix.
//
// Shape legend: B questions, C context positions, Q question positions (both padded), D width.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace moelab {

class ContextQuestionAttentionImpl : public torch::nn::Module {
 public:
  explicit ContextQuestionAttentionImpl(int64_t dim);

  // context [B, C, D], question [B, Q, D]; the masks ([B, C], [B, Q] bool) are true at real
  // tokens, and every row needs at least one real token of each. Returns [B, C, 4D]:
  // (c, a, c * a, c * h), a the question read for c, h the question's summary of the context.
  // Padding never changes a real position's output.
  torch::Tensor forward(const torch::Tensor& context, const torch::Tensor& context_mask, const torch::Tensor& question,
                        const torch::Tensor& question_mask);
  // similarity[b, i, j] = w_c . c_i + w_q . q_j + w_p . (c_i * q_j), [B, C, Q], unmasked.
  torch::Tensor similarity(const torch::Tensor& context, const torch::Tensor& question) const;
  int64_t output_dim() const { return 4 * dim; }
  // Matrix-product FLOPs per context token against a question of `question_tokens` tokens.
  int64_t flops_per_context_token(double question_tokens) const;

  int64_t dim;
  torch::Tensor w_context, w_question, w_product;  // [D] each
};
TORCH_MODULE(ContextQuestionAttention);

}  // namespace moelab
