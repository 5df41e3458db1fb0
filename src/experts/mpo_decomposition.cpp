#include "moelab/experts/mpo_decomposition.h"

#include <torch/torch.h>

#include <cmath>

#include "moelab/experts/tensor_chain.h"
#include "moelab/util/error.h"

namespace moelab {

double MpoDecomposition::relative_error() const {
  return norm_squared > 0 ? std::sqrt(discarded_squared / norm_squared) : 0.0;
}

std::vector<int64_t> mpo_mode_sizes(const std::vector<int64_t>& row_factors, const std::vector<int64_t>& col_factors) {
  if (row_factors.size() != col_factors.size())
    fail("an MPO needs as many row factors as column factors (one core per pair), got {} and {}", row_factors.size(),
         col_factors.size());
  std::vector<int64_t> modes;
  for (size_t k = 0; k < row_factors.size(); ++k) modes.push_back(row_factors[k] * col_factors[k]);
  return modes;
}

namespace {

// Interleaves the row and column indices: [i_1..i_n, j_1..j_n] -> [i_1, j_1, ..., i_n, j_n].
std::vector<int64_t> interleaving(size_t n) {
  std::vector<int64_t> order;
  for (size_t k = 0; k < n; ++k) {
    order.push_back(static_cast<int64_t>(k));
    order.push_back(static_cast<int64_t>(n + k));
  }
  return order;
}

}  // namespace

MpoDecomposition mpo_decompose(const torch::Tensor& weight, const std::vector<int64_t>& row_factors,
                               const std::vector<int64_t>& col_factors, int64_t max_bond, int64_t centre) {
  TORCH_CHECK(weight.dim() == 2, "mpo_decompose expects a matrix, got ", weight.sizes());
  check_factorisation(row_factors, weight.size(0), "the MPO row factors");
  check_factorisation(col_factors, weight.size(1), "the MPO column factors");
  const auto modes = mpo_mode_sizes(row_factors, col_factors);
  const int64_t n = static_cast<int64_t>(modes.size());
  if (centre < 0 || centre >= n) fail("MPO central core index {} is outside 0..{}", centre, n - 1);
  if (max_bond < 1) fail("MPO bond dimension must be >= 1, got {}", max_bond);
  const auto bonds = chain_bond_sizes(modes, max_bond);

  std::vector<int64_t> split(row_factors);
  split.insert(split.end(), col_factors.begin(), col_factors.end());
  auto rest = weight.detach().reshape(split).permute(interleaving(row_factors.size())).contiguous();

  MpoDecomposition out;
  out.norm_squared = weight.detach().pow(2).sum().item<double>();
  out.cores.resize(n);
  auto drop = [&](const torch::Tensor& singular, int64_t kept) {
    out.discarded_squared += singular.narrow(0, kept, singular.size(0) - kept).pow(2).sum().item<double>();
  };
  // Left sweep: rest is [a, m_k * everything right of k].
  int64_t left_bond = 1;
  rest = rest.reshape({1, -1});
  for (int64_t k = 0; k < centre; ++k) {
    const auto [u, s, vh] = torch::linalg_svd(rest.reshape({left_bond * modes[k], -1}), /*full_matrices=*/false);
    const int64_t b = bonds[k];
    drop(s, b);
    out.cores[k] = u.narrow(1, 0, b).reshape({left_bond, modes[k], b}).contiguous();
    rest = s.narrow(0, 0, b).unsqueeze(1) * vh.narrow(0, 0, b);
    left_bond = b;
  }
  // Right sweep: rest is [everything left of k * m_k, right bond].
  int64_t right_bond = 1;
  rest = rest.reshape({-1, 1});
  for (int64_t k = n - 1; k > centre; --k) {
    const auto [u, s, vh] = torch::linalg_svd(rest.reshape({-1, modes[k] * right_bond}), /*full_matrices=*/false);
    const int64_t b = bonds[k - 1];
    drop(s, b);
    out.cores[k] = vh.narrow(0, 0, b).reshape({b, modes[k], right_bond}).contiguous();
    rest = u.narrow(1, 0, b) * s.narrow(0, 0, b).unsqueeze(0);
    right_bond = b;
  }
  out.cores[centre] = rest.reshape({left_bond, modes[centre], right_bond}).contiguous();
  return out;
}

torch::Tensor mpo_to_matrix(const std::vector<torch::Tensor>& cores, const std::vector<int64_t>& row_factors,
                            const std::vector<int64_t>& col_factors) {
  const size_t n = row_factors.size();
  auto chain = contract_chain(cores);  // [E?, 1, prod m_k, 1]
  const bool stacked = chain.dim() == 4;
  std::vector<int64_t> shape, order;
  if (stacked) {
    shape.push_back(chain.size(0));
    order.push_back(0);
  }
  const int64_t offset = stacked ? 1 : 0;
  for (size_t k = 0; k < n; ++k) {
    shape.push_back(row_factors[k]);
    shape.push_back(col_factors[k]);
  }
  for (size_t k = 0; k < n; ++k) order.push_back(offset + 2 * static_cast<int64_t>(k));      // rows
  for (size_t k = 0; k < n; ++k) order.push_back(offset + 2 * static_cast<int64_t>(k) + 1);  // columns
  auto matrix = chain.reshape(shape).permute(order);
  if (stacked) return matrix.reshape({chain.size(0), product(row_factors), product(col_factors)});
  return matrix.reshape({product(row_factors), product(col_factors)});
}

}  // namespace moelab
