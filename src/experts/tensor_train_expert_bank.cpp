#include "moelab/experts/tensor_train_expert_bank.h"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include <cmath>

#include "moelab/experts/expert_init.h"
#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/experts/tensor_chain.h"
#include "moelab/util/error.h"

namespace moelab {

namespace {

std::vector<int64_t> concat(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  std::vector<int64_t> out(a);
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

// All bonds of the train over (rows..., cols...), the outer 1s included.
std::vector<int64_t> train_bonds(const TensorTrainDelta& delta, int64_t rank) {
  return chain_bond_sizes_with_ends(concat(delta.row_factors, delta.col_factors), rank);
}

// N(0, 1/a) per core (a its left bond), the first core scaled for nn.Linear's entry variance
// 1/(3 fan_in) in A, and B's last core zero so the delta starts at zero.
TensorTrainDelta make_delta(torch::nn::Module& bank, ExpertInit& init, const std::string& name, const std::vector<int64_t>& rows,
                            const std::vector<int64_t>& cols, int64_t rank, int64_t experts) {
  TensorTrainDelta delta{rows, cols, {}, {}};
  const auto bonds = train_bonds(delta, rank);
  const auto modes = concat(rows, cols);
  const double fan_in = static_cast<double>(product(rows));
  for (size_t k = 0; k < modes.size(); ++k) {
    const bool in_a = k < rows.size();
    const bool last = k + 1 == modes.size();
    const double std = k == 0 ? 1.0 / std::sqrt(3.0 * fan_in) : 1.0 / std::sqrt(static_cast<double>(bonds[k]));
    const auto value = last ? torch::zeros({experts, bonds[k], modes[k], bonds[k + 1]})
                            : init.normal({experts, bonds[k], modes[k], bonds[k + 1]}, std);
    const auto key = in_a ? fmt::format("{}_a_core{}", name, k) : fmt::format("{}_b_core{}", name, k - rows.size());
    (in_a ? delta.a_cores : delta.b_cores).push_back(bank.register_parameter(key, value));
  }
  return delta;
}

}  // namespace

torch::Tensor TensorTrainDelta::a() const {
  const auto chain = contract_chain(a_cores);  // [E, 1, rows, r_mid]
  return chain.reshape({chain.size(0), chain.size(2), chain.size(3)});
}

torch::Tensor TensorTrainDelta::b() const {
  const auto chain = contract_chain(b_cores);  // [E, r_mid, cols, 1]
  return chain.reshape({chain.size(0), chain.size(1), chain.size(2)});
}

TensorTrainExpertBank::TensorTrainExpertBank(const TensorTrainExpertBankOptions& options_) : options(options_) {
  const int64_t e = options.num_experts(), d = options.model_dim(), h = options.hidden_dim();
  check_bank_sizes(e, h);
  check_factorisation(options.model_factors(), d, "moe.model_factors");
  check_factorisation(options.hidden_factors(), h, "moe.hidden_factors");
  check_rank(options.rank(), d, h);
  const bool train_base = !options.freeze_base();
  ExpertInit init(options.first_expert());
  w_in = register_parameter("w_in", init.shared_linear({d, h}, d), train_base);
  b_in = register_parameter("b_in", init.shared_linear({h}, d), train_base);
  w_out = register_parameter("w_out", init.shared_linear({h, d}, h), train_base);
  b_out = register_parameter("b_out", init.shared_linear({d}, h), train_base);
  delta_in = make_delta(*this, init, "in", options.model_factors(), options.hidden_factors(), options.rank(), e);
  delta_out = make_delta(*this, init, "out", options.hidden_factors(), options.model_factors(), options.rank(), e);
}

int64_t TensorTrainExpertBank::delta_rank() const { return delta_in.a_cores.back().size(3); }

LowRankDeltas TensorTrainExpertBank::deltas() const {
  return {delta_in.a(), delta_in.b(), delta_out.a(), delta_out.b()};
}

std::vector<torch::Tensor> TensorTrainExpertBank::shared_parameters() const { return {w_in, b_in, w_out, b_out}; }

int64_t TensorTrainExpertBank::flops_per_slot() const {
  const int64_t d = options.model_dim(), h = options.hidden_dim();
  return 2 * h * d + 4 * delta_rank() * (d + h);
}

int64_t TensorTrainExpertBank::flops_per_forward() const {
  int64_t flops = 0;
  for (const auto* delta : {&delta_in, &delta_out}) {
    const auto bonds = train_bonds(*delta, options.rank());
    const size_t p = delta->row_factors.size();
    // A over bonds 0..p, B over bonds p..end, contracted separately.
    flops += chain_contraction_flops(delta->row_factors, {bonds.begin(), bonds.begin() + p + 1});
    flops += chain_contraction_flops(delta->col_factors, {bonds.begin() + p, bonds.end()});
  }
  return options.num_experts() * flops;
}

torch::Tensor TensorTrainExpertBank::forward(const torch::Tensor& x, const DispatchPlan& plan) {
  return base_plus_delta_forward(x, plan, w_in, b_in, w_out, b_out, deltas());
}

torch::Tensor TensorTrainExpertBank::all_experts_reference(const torch::Tensor& x) {
  // The full train contracted in one chain (A and B together), not through a() and b().
  auto full = [&](const TensorTrainDelta& delta) {
    std::vector<torch::Tensor> cores(delta.a_cores);
    cores.insert(cores.end(), delta.b_cores.begin(), delta.b_cores.end());
    const int64_t e = options.num_experts();
    return contract_chain(cores).reshape({e, product(delta.row_factors), product(delta.col_factors)});
  };
  return stacked_ffn_reference(x, w_in.unsqueeze(0) + full(delta_in), b_in, w_out.unsqueeze(0) + full(delta_out),
                               b_out);
}

void TensorTrainExpertBank::pretty_print(std::ostream& stream) const {
  stream << "moelab::TensorTrainExpertBank(experts=" << options.num_experts() << ", dim=" << options.model_dim()
         << ", hidden=" << options.hidden_dim() << ", model_factors=["
         << fmt::format("{}", fmt::join(options.model_factors(), ",")) << "], hidden_factors=["
         << fmt::format("{}", fmt::join(options.hidden_factors(), ",")) << "], rank=" << options.rank()
         << ", freeze_base=" << options.freeze_base() << ")";
}

}  // namespace moelab
