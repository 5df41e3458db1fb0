// Experts with shared input and output projections and a small unique core each ("partial weight
// tying"): the outer factors of a low-rank expert are shared by all experts,
//   h_e(x) = relu((x P_in) C_in,e + b_in,e),   y_e(x) = (h_e(x) C_out,e) P_out + b_out
// with P_in [D, r] and P_out [r, D] shared, and the core C_in,e [r, H], C_out,e [H, r], b_in,e [H]
// per expert. x P_in is computed once per token; the cores run as grouped products.
//
// Shape legend: M rows, N tokens, D model width, H hidden width, r projection width, E experts.
#pragma once
#include <torch/arg.h>

#include "moelab/experts/expert_bank.h"

namespace moelab {

struct SharedProjectionExpertBankOptions {
  SharedProjectionExpertBankOptions(int64_t model_dim, int64_t hidden_dim, int64_t num_experts, int64_t rank)
      : model_dim_(model_dim), hidden_dim_(hidden_dim), num_experts_(num_experts), rank_(rank) {}
  TORCH_ARG(int64_t, model_dim);
  TORCH_ARG(int64_t, hidden_dim);
  TORCH_ARG(int64_t, num_experts);
  /// Global id of this bank's expert 0 when the experts are split over ranks (see expert_init.h).
  TORCH_ARG(int64_t, first_expert) = 0;
  /// Width r of the shared projections, 1 <= r <= min(D, H).
  TORCH_ARG(int64_t, rank);
};

class SharedProjectionExpertBank : public ExpertBank {
 public:
  explicit SharedProjectionExpertBank(const SharedProjectionExpertBankOptions& options);

  torch::Tensor forward(const torch::Tensor& x, const DispatchPlan& plan) override;
  torch::Tensor all_experts_reference(const torch::Tensor& x) override;
  int64_t num_experts() const override { return options.num_experts(); }
  std::vector<torch::Tensor> shared_parameters() const override { return {proj_in, proj_out, b_out}; }
  int64_t flops_shared_per_token() const override { return 2 * options.model_dim() * options.rank(); }
  // Both cores and the output projection run per token-slot.
  int64_t flops_per_slot() const override {
    return 4 * options.rank() * options.hidden_dim() + 2 * options.rank() * options.model_dim();
  }
  void pretty_print(std::ostream& stream) const override;

  SharedProjectionExpertBankOptions options;
  torch::Tensor proj_in, proj_out, b_out;  // shared: [D, r], [r, D], [D]
  torch::Tensor core_in, b_in, core_out;   // per expert: [E, r, H], [E, H], [E, H, r]
};

}  // namespace moelab
