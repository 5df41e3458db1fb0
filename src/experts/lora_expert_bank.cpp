#include "moelab/experts/lora_expert_bank.h"

#include <cmath>

#include "moelab/dispatch/grouped_matmul.h"
#include "moelab/experts/expert_init.h"
#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/util/error.h"

namespace moelab {


LoraExpertBank::LoraExpertBank(const LoraExpertBankOptions& options_) : options(options_) {
  const int64_t e = options.num_experts(), d = options.model_dim(), h = options.hidden_dim(), r = options.rank();
  check_bank_sizes(e, h);
  check_rank(r, d, h);
  ExpertInit init(options.first_expert());
  w_in = register_parameter("w_in", init.shared_linear({d, h}, d), !options.freeze_base());
  b_in = register_parameter("b_in", init.shared_linear({h}, d), !options.freeze_base());
  w_out = register_parameter("w_out", init.shared_linear({h, d}, h), !options.freeze_base());
  b_out = register_parameter("b_out", init.shared_linear({d}, h), !options.freeze_base());
  lora_a_in = register_parameter("lora_a_in", init.linear({e, d, r}, d));
  lora_b_in = register_parameter("lora_b_in", torch::zeros({e, r, h}));
  lora_a_out = register_parameter("lora_a_out", init.linear({e, h, r}, h));
  lora_b_out = register_parameter("lora_b_out", torch::zeros({e, r, d}));
}

std::vector<torch::Tensor> LoraExpertBank::shared_parameters() const { return {w_in, b_in, w_out, b_out}; }

torch::Tensor base_plus_delta_forward(const torch::Tensor& x, const DispatchPlan& plan, const torch::Tensor& w_in,
                                      const torch::Tensor& b_in, const torch::Tensor& w_out, const torch::Tensor& b_out,
                                      const LowRankDeltas& deltas) {
  const auto& counts = plan.rows_per_expert;
  const auto base_in = torch::addmm(b_in, x, w_in).index_select(0, plan.token_index);  // once per token, [M, H]
  const auto rows = dispatch_rows(x, plan);                                              // [M, D]
  const auto hidden =
      torch::relu(base_in + grouped_matmul(grouped_matmul(rows, deltas.a_in, counts), deltas.b_in, counts));
  return torch::addmm(b_out, hidden, w_out) +
         grouped_matmul(grouped_matmul(hidden, deltas.a_out, counts), deltas.b_out, counts);
}

torch::Tensor base_plus_delta_reference(const torch::Tensor& x, const torch::Tensor& w_in, const torch::Tensor& b_in,
                                        const torch::Tensor& w_out, const torch::Tensor& b_out,
                                        const LowRankDeltas& deltas) {
  // The shared biases [H] and [D] broadcast over experts.
  return stacked_ffn_reference(x, w_in.unsqueeze(0) + torch::bmm(deltas.a_in, deltas.b_in), b_in,
                               w_out.unsqueeze(0) + torch::bmm(deltas.a_out, deltas.b_out), b_out);
}

torch::Tensor LoraExpertBank::forward(const torch::Tensor& x, const DispatchPlan& plan) {
  return base_plus_delta_forward(x, plan, w_in, b_in, w_out, b_out, {lora_a_in, lora_b_in, lora_a_out, lora_b_out});
}

torch::Tensor LoraExpertBank::all_experts_reference(const torch::Tensor& x) {
  return base_plus_delta_reference(x, w_in, b_in, w_out, b_out, {lora_a_in, lora_b_in, lora_a_out, lora_b_out});
}

void LoraExpertBank::pretty_print(std::ostream& stream) const {
  stream << "moelab::LoraExpertBank(experts=" << options.num_experts() << ", dim=" << options.model_dim()
         << ", hidden=" << options.hidden_dim() << ", rank=" << options.rank()
         << ", freeze_base=" << options.freeze_base() << ")";
}

}  // namespace moelab
