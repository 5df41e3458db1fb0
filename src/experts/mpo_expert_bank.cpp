#include "moelab/experts/mpo_expert_bank.h"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include <cmath>

#include "moelab/experts/expert_init.h"
#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/experts/mpo_decomposition.h"
#include "moelab/experts/tensor_chain.h"
#include "moelab/util/error.h"
#include "moelab/util/mix64.h"

namespace moelab {

void check_mpo_shape(const std::vector<int64_t>& model_factors, const std::vector<int64_t>& hidden_factors,
                     int64_t model_dim, int64_t hidden_dim, int64_t bond) {
  check_factorisation(model_factors, model_dim, "moe.model_factors");
  check_factorisation(hidden_factors, hidden_dim, "moe.hidden_factors");
  if (model_factors.size() != hidden_factors.size())
    fail("moe.model_factors ({} factors) and moe.hidden_factors ({} factors) need the same count: core k couples "
         "model factor k with hidden factor k",
         model_factors.size(), hidden_factors.size());
  if (model_factors.size() < 3 || model_factors.size() % 2 == 0)
    fail("the mpo bank needs an odd number of cores >= 3 (one central core between equal numbers of auxiliary "
         "cores); moe.model_factors has {}",
         model_factors.size());
  if (bond < 1) fail("moe.bond must be >= 1, got {}", bond);
}

namespace {

// Cores of one matrix with fresh values: N(0, 1/a) per core (a its left bond), the first core
// scaled so that the contracted matrix has nn.Linear's entry variance 1/(3 fan_in).
MpoMatrix make_matrix(torch::nn::Module& bank, ExpertInit& init, const std::string& name, const std::vector<int64_t>& rows,
                      const std::vector<int64_t>& cols, int64_t bond, int64_t experts, int64_t centre) {
  MpoMatrix matrix{rows, cols, {}};
  const auto modes = mpo_mode_sizes(rows, cols);
  const auto bonds = chain_bond_sizes_with_ends(modes, bond);
  const double fan_in = static_cast<double>(product(rows));
  for (size_t k = 0; k < modes.size(); ++k) {
    const double std = k == 0 ? 1.0 / std::sqrt(3.0 * fan_in) : 1.0 / std::sqrt(static_cast<double>(bonds[k]));
    const bool shared = static_cast<int64_t>(k) == centre;
    std::vector<int64_t> shape = {bonds[k], modes[k], bonds[k + 1]};
    if (!shared) shape.insert(shape.begin(), experts);
    const auto key = shared ? name + "_central" : fmt::format("{}_core{}", name, k);
    matrix.cores.push_back(bank.register_parameter(key, shared ? init.shared_normal(shape, std) : init.normal(shape, std)));
  }
  return matrix;
}

int64_t matrix_flops(const MpoMatrix& matrix, int64_t experts, int64_t bond) {
  const auto modes = mpo_mode_sizes(matrix.row_factors, matrix.col_factors);
  return experts * chain_contraction_flops(modes, chain_bond_sizes_with_ends(modes, bond));
}

}  // namespace

MpoExpertBank::MpoExpertBank(const MpoExpertBankOptions& options_) : options(options_) {
  const int64_t e = options.num_experts(), d = options.model_dim(), h = options.hidden_dim();
  check_bank_sizes(e, h);
  check_mpo_shape(options.model_factors(), options.hidden_factors(), d, h, options.bond());
  const double p = options.central_update_p();
  if (!(p >= 0.0 && p <= 1.0)) fail("moe.central_update_p must be in [0, 1], got {}", p);
  ExpertInit init(options.first_expert());
  in = make_matrix(*this, init, "in", options.model_factors(), options.hidden_factors(), options.bond(), e, central_index());
  out = make_matrix(*this, init, "out", options.hidden_factors(), options.model_factors(), options.bond(), e,
                    central_index());
  b_in = register_parameter("b_in", init.linear({e, h}, d));
  b_out = register_parameter("b_out", init.linear({e, d}, h));
}

std::vector<torch::Tensor> MpoExpertBank::shared_parameters() const {
  return {in.cores[central_index()], out.cores[central_index()]};
}

int64_t MpoExpertBank::flops_per_forward() const {
  return matrix_flops(in, options.num_experts(), options.bond()) +
         matrix_flops(out, options.num_experts(), options.bond());
}

torch::Tensor MpoExpertBank::weight_in() const { return mpo_to_matrix(in.cores, in.row_factors, in.col_factors); }
torch::Tensor MpoExpertBank::weight_out() const { return mpo_to_matrix(out.cores, out.row_factors, out.col_factors); }

torch::Tensor MpoExpertBank::forward(const torch::Tensor& x, const DispatchPlan& plan) {
  return stacked_ffn_forward(x, plan, weight_in(), b_in, weight_out(), b_out);
}

torch::Tensor MpoExpertBank::all_experts_reference(const torch::Tensor& x) {
  // Each expert's matrices contracted on their own, one chain at a time: an independent route
  // to the same weights as the batched contraction in forward().
  std::vector<torch::Tensor> w_in, w_out;
  for (int64_t e = 0; e < options.num_experts(); ++e) {
    auto expert_cores = [&](const MpoMatrix& m) {
      std::vector<torch::Tensor> cores;
      for (size_t k = 0; k < m.cores.size(); ++k)
        cores.push_back(static_cast<int64_t>(k) == central_index() ? m.cores[k] : m.cores[k][e]);
      return mpo_to_matrix(cores, m.row_factors, m.col_factors);
    };
    w_in.push_back(expert_cores(in));
    w_out.push_back(expert_cores(out));
  }
  return stacked_ffn_reference(x, torch::stack(w_in), b_in, torch::stack(w_out), b_out);
}

bool MpoExpertBank::central_updates_at(uint64_t seed, int64_t step) const {
  const double p = options.central_update_p();
  if (p >= 1.0) return true;
  if (p <= 0.0) return false;
  // A salt keeps these draws apart from other users of (seed, step).
  return uniform_from(seed ^ 0x6d706f2d6d61736bULL, static_cast<uint64_t>(step)) < p;
}

void MpoExpertBank::mask_gradients(uint64_t seed, int64_t step) {
  if (central_updates_at(seed, step)) return;
  // An undefined gradient makes every LibTorch optimizer (and gradient clipping) skip the tensor,
  // momentum and weight decay included; a zeroed one would still let them move it.
  for (auto* matrix : {&in, &out}) matrix->cores[central_index()].mutable_grad() = torch::Tensor();
}

void MpoExpertBank::pretty_print(std::ostream& stream) const {
  stream << "moelab::MpoExpertBank(experts=" << options.num_experts() << ", dim=" << options.model_dim()
         << ", hidden=" << options.hidden_dim() << ", model_factors=[" << fmt::format("{}", fmt::join(options.model_factors(), ","))
         << "], hidden_factors=[" << fmt::format("{}", fmt::join(options.hidden_factors(), ",")) << "], bond=" << options.bond()
         << ", central_update_p=" << options.central_update_p() << ")";
}

}  // namespace moelab
