// Low-rank FFN experts: each expert's two weight matrices are factorised, W_in = U_in V_in
// ([D, r] x [r, H]) and W_out = U_out V_out ([H, r] x [r, D]), all per expert and stacked, so the
// bank runs as four grouped products. Parameters per expert: 2 r (D + H) + H + D instead of
// 2 D H + H + D; FLOPs per token-slot 4 r (D + H) instead of 4 D H.
//
// Shape legend: M rows, N tokens, D model width, H hidden width, r rank, E experts.
#pragma once
#include <torch/arg.h>

#include "moelab/experts/expert_bank.h"

namespace moelab {

struct LowRankExpertBankOptions {
  LowRankExpertBankOptions(int64_t model_dim, int64_t hidden_dim, int64_t num_experts, int64_t rank)
      : model_dim_(model_dim), hidden_dim_(hidden_dim), num_experts_(num_experts), rank_(rank) {}
  TORCH_ARG(int64_t, model_dim);
  TORCH_ARG(int64_t, hidden_dim);
  TORCH_ARG(int64_t, num_experts);
  /// Global id of this bank's expert 0 when the experts are split over ranks (see expert_init.h).
  TORCH_ARG(int64_t, first_expert) = 0;
  /// Rank r of every factorised matrix, 1 <= r <= min(D, H).
  TORCH_ARG(int64_t, rank);
};

class LowRankExpertBank : public ExpertBank {
 public:
  explicit LowRankExpertBank(const LowRankExpertBankOptions& options);

  torch::Tensor forward(const torch::Tensor& x, const DispatchPlan& plan) override;
  torch::Tensor all_experts_reference(const torch::Tensor& x) override;
  int64_t num_experts() const override { return options.num_experts(); }
  int64_t flops_per_slot() const override {
    return 4 * options.rank() * (options.model_dim() + options.hidden_dim());
  }
  void pretty_print(std::ostream& stream) const override;

  LowRankExpertBankOptions options;
  torch::Tensor u_in, v_in, b_in;     // [E, D, r], [E, r, H], [E, H]
  torch::Tensor u_out, v_out, b_out;  // [E, H, r], [E, r, D], [E, D]
};

}  // namespace moelab
