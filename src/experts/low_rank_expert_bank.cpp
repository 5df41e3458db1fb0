#include "moelab/experts/low_rank_expert_bank.h"

#include <cmath>

#include "moelab/dispatch/grouped_bias.h"
#include "moelab/dispatch/grouped_matmul.h"
#include "moelab/experts/expert_init.h"
#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/util/error.h"

namespace moelab {


LowRankExpertBank::LowRankExpertBank(const LowRankExpertBankOptions& options_) : options(options_) {
  const int64_t e = options.num_experts(), d = options.model_dim(), h = options.hidden_dim(), r = options.rank();
  check_bank_sizes(e, h);
  check_rank(r, d, h);
  // Each factor at the scale of a Linear layer of its own fan-in.
  ExpertInit init(options.first_expert());
  u_in = register_parameter("u_in", init.linear({e, d, r}, d));
  v_in = register_parameter("v_in", init.linear({e, r, h}, r));
  b_in = register_parameter("b_in", init.linear({e, h}, d));
  u_out = register_parameter("u_out", init.linear({e, h, r}, h));
  v_out = register_parameter("v_out", init.linear({e, r, d}, r));
  b_out = register_parameter("b_out", init.linear({e, d}, h));
}

torch::Tensor LowRankExpertBank::forward(const torch::Tensor& x, const DispatchPlan& plan) {
  const auto& counts = plan.rows_per_expert;
  const auto rows = dispatch_rows(x, plan);  // [M, D]
  const auto hidden =
      grouped_bias(grouped_matmul(grouped_matmul(rows, u_in, counts), v_in, counts), b_in, plan, BiasActivation::kRelu);
  return grouped_bias(grouped_matmul(grouped_matmul(hidden, u_out, counts), v_out, counts), b_out, plan,
                      BiasActivation::kNone);
}

torch::Tensor LowRankExpertBank::all_experts_reference(const torch::Tensor& x) {
  return stacked_ffn_reference(x, torch::bmm(u_in, v_in), b_in, torch::bmm(u_out, v_out), b_out);
}

void LowRankExpertBank::pretty_print(std::ostream& stream) const {
  stream << "moelab::LowRankExpertBank(experts=" << options.num_experts() << ", dim=" << options.model_dim()
         << ", hidden=" << options.hidden_dim() << ", rank=" << options.rank() << ")";
}

}  // namespace moelab
