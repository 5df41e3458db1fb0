#include "moelab/experts/ffn_expert_bank.h"

#include <cmath>

#include "moelab/dispatch/grouped_bias.h"
#include "moelab/dispatch/grouped_matmul.h"
#include "moelab/experts/expert_init.h"
#include "moelab/device/dropout.h"
#include "moelab/util/error.h"

namespace moelab {

FfnExpertBank::FfnExpertBank(const FfnExpertBankOptions& options_) : options(options_) {
  check_bank_sizes(options.num_experts(), options.hidden_dim());
  reset();
}

void FfnExpertBank::reset() {
  const int64_t e = options.num_experts(), d = options.model_dim(), h = options.hidden_dim();
  ExpertInit init(options.first_expert());
  w_in = register_parameter("w_in", init.linear({e, d, h}, d));
  b_in = register_parameter("b_in", init.linear({e, h}, d));
  w_out = register_parameter("w_out", init.linear({e, h, d}, h));
  b_out = register_parameter("b_out", init.linear({e, d}, h));
}

int64_t FfnExpertBank::params_for(const FfnExpertBankOptions& o) {
  return o.num_experts() * (2 * o.model_dim() * o.hidden_dim() + o.hidden_dim() + o.model_dim());
}

torch::Tensor stacked_ffn_forward(const torch::Tensor& x, const DispatchPlan& plan, const torch::Tensor& w_in,
                                  const torch::Tensor& b_in, const torch::Tensor& w_out, const torch::Tensor& b_out,
                                  double hidden_dropout, bool training) {
  const auto rows = dispatch_rows(x, plan);  // [M, D]
  auto hidden =
      grouped_bias(grouped_matmul(rows, w_in, plan.rows_per_expert), b_in, plan, BiasActivation::kRelu);  // [M, H]
  if (hidden_dropout > 0 && training) hidden = moelab::dropout(hidden, hidden_dropout, /*train=*/true);
  return grouped_bias(grouped_matmul(hidden, w_out, plan.rows_per_expert), b_out, plan, BiasActivation::kNone);
}

torch::Tensor stacked_ffn_reference(const torch::Tensor& x, const torch::Tensor& w_in, const torch::Tensor& b_in,
                                    const torch::Tensor& w_out, const torch::Tensor& b_out) {
  const auto hidden = torch::relu(torch::einsum("nd,edh->neh", {x, w_in}) + b_in.unsqueeze(0));  // [N, E, H]
  return torch::einsum("neh,ehd->ned", {hidden, w_out}) + b_out.unsqueeze(0);                    // [N, E, D]
}

torch::Tensor FfnExpertBank::forward(const torch::Tensor& x, const DispatchPlan& plan) {
  return stacked_ffn_forward(x, plan, w_in, b_in, w_out, b_out, options.hidden_dropout(), is_training());
}

torch::Tensor FfnExpertBank::all_experts_reference(const torch::Tensor& x) {
  return stacked_ffn_reference(x, w_in, b_in, w_out, b_out);
}

void FfnExpertBank::pretty_print(std::ostream& stream) const {
  stream << "moelab::FfnExpertBank(experts=" << options.num_experts() << ", dim=" << options.model_dim()
         << ", hidden=" << options.hidden_dim() << ")";
}

}  // namespace moelab
