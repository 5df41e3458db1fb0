#include "moelab/experts/shared_projection_expert_bank.h"

#include "moelab/dispatch/grouped_bias.h"
#include "moelab/dispatch/grouped_matmul.h"
#include "moelab/experts/expert_init.h"
#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/util/error.h"

namespace moelab {

SharedProjectionExpertBank::SharedProjectionExpertBank(const SharedProjectionExpertBankOptions& options_)
    : options(options_) {
  const int64_t e = options.num_experts(), d = options.model_dim(), h = options.hidden_dim(), r = options.rank();
  check_bank_sizes(e, h);
  check_rank(r, d, h);
  ExpertInit init(options.first_expert());
  proj_in = register_parameter("proj_in", init.shared_linear({d, r}, d));
  proj_out = register_parameter("proj_out", init.shared_linear({r, d}, r));
  b_out = register_parameter("b_out", init.shared_linear({d}, h));
  core_in = register_parameter("core_in", init.linear({e, r, h}, r));
  b_in = register_parameter("b_in", init.linear({e, h}, r));
  core_out = register_parameter("core_out", init.linear({e, h, r}, h));
}

torch::Tensor SharedProjectionExpertBank::forward(const torch::Tensor& x, const DispatchPlan& plan) {
  const auto& counts = plan.rows_per_expert;
  const auto projected = x.mm(proj_in).index_select(0, plan.token_index);  // once per token, [M, r]
  const auto hidden = grouped_bias(grouped_matmul(projected, core_in, counts), b_in, plan, BiasActivation::kRelu);
  return torch::addmm(b_out, grouped_matmul(hidden, core_out, counts), proj_out);
}

torch::Tensor SharedProjectionExpertBank::all_experts_reference(const torch::Tensor& x) {
  // The shared output bias [D] broadcasts over experts.
  return stacked_ffn_reference(x, torch::matmul(proj_in, core_in), b_in, torch::matmul(core_out, proj_out), b_out);
}

void SharedProjectionExpertBank::pretty_print(std::ostream& stream) const {
  stream << "moelab::SharedProjectionExpertBank(experts=" << options.num_experts() << ", dim=" << options.model_dim()
         << ", hidden=" << options.hidden_dim() << ", projection=" << options.rank() << ")";
}

}  // namespace moelab
