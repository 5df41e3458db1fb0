#include "moelab/experts/ffn_expert_bank.h"

#include <cmath>

#include "moelab/dispatch/grouped_matmul.h"
#include "moelab/util/error.h"

namespace moelab {

FfnExpertBank::FfnExpertBank(const FfnExpertBankOptions& options_) : options(options_) {
  if (options.num_experts() < 1) fail("an expert bank needs >= 1 expert, got {}", options.num_experts());
  if (options.hidden_dim() < 1) fail("moe.expert_hidden must be >= 1, got {}", options.hidden_dim());
  reset();
}

void FfnExpertBank::reset() {
  const int64_t e = options.num_experts(), d = options.model_dim(), h = options.hidden_dim();
  // Same scale as torch::nn::Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  const double bound_in = 1.0 / std::sqrt(static_cast<double>(d));
  const double bound_out = 1.0 / std::sqrt(static_cast<double>(h));
  w_in = register_parameter("w_in", torch::empty({e, d, h}).uniform_(-bound_in, bound_in));
  b_in = register_parameter("b_in", torch::empty({e, h}).uniform_(-bound_in, bound_in));
  w_out = register_parameter("w_out", torch::empty({e, h, d}).uniform_(-bound_out, bound_out));
  b_out = register_parameter("b_out", torch::empty({e, d}).uniform_(-bound_out, bound_out));
}

torch::Tensor FfnExpertBank::forward(const torch::Tensor& rows, const DispatchPlan& plan) {
  const auto hidden = torch::relu(grouped_matmul(rows, w_in, plan.rows_per_expert) +
                                  b_in.index_select(0, plan.expert_of_row));  // [M, H]
  return grouped_matmul(hidden, w_out, plan.rows_per_expert) + b_out.index_select(0, plan.expert_of_row);
}

torch::Tensor FfnExpertBank::all_experts_reference(const torch::Tensor& x) {
  const auto hidden = torch::relu(torch::einsum("nd,edh->neh", {x, w_in}) + b_in.unsqueeze(0));  // [N, E, H]
  return torch::einsum("neh,ehd->ned", {hidden, w_out}) + b_out.unsqueeze(0);                    // [N, E, D]
}

int64_t FfnExpertBank::params_per_expert() const {
  // Every tensor of this bank is stacked per expert, so one expert owns 1/E of each.
  int64_t total = 0;
  for (const auto& p : parameters()) total += p.numel();
  return total / options.num_experts();
}

void FfnExpertBank::pretty_print(std::ostream& stream) const {
  stream << "moelab::FfnExpertBank(experts=" << options.num_experts() << ", dim=" << options.model_dim()
         << ", hidden=" << options.hidden_dim() << ")";
}

}  // namespace moelab
