// Matrix product operators (Gao et al. 2022, "MPOE"; Novikov et al. 2015's TT-matrix format): a
// matrix W [I, J] with I = i_1 ... i_n and J = j_1 ... j_n written as a chain of n cores
//   W[(i_1..i_n), (j_1..j_n)] = G_1[:, i_1, j_1, :] G_2[:, i_2, j_2, :] ... G_n[:, i_n, j_n, :].
// A core is stored as [a, i_k * j_k, b] (mode index i * j_k + j), a stack of them as
// [E, a, i_k * j_k, b], so tensor_chain.h contracts them.
//
// The decomposition is the sequential-SVD algorithm, swept from both ends towards the central core
// (cores left of it come out left-orthonormal, cores right of it right-orthonormal, and the
// central core holds the weight's scale). Each truncation is an orthogonal projection orthogonal to
// the earlier ones, so the squared Frobenius error is exactly the sum of the squared discarded
// singular values.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace moelab {

struct MpoDecomposition {
  std::vector<torch::Tensor> cores;   // n cores [a, i_k * j_k, b]
  double discarded_squared = 0;       // sum of squared singular values dropped by the truncations
  double norm_squared = 0;            // ||W||_F^2
  // ||W - contraction||_F / ||W||_F as the discarded singular values predict it.
  double relative_error() const;
};

// Mode sizes m_k = i_k * j_k of an MPO with these row and column factors.
std::vector<int64_t> mpo_mode_sizes(const std::vector<int64_t>& row_factors, const std::vector<int64_t>& col_factors);

// Decomposes W [I, J] into n = row_factors.size() cores with bonds chain_bond_sizes(modes, max_bond)
// and the central core at index `centre`. Factors must multiply to I and J (checked).
MpoDecomposition mpo_decompose(const torch::Tensor& weight, const std::vector<int64_t>& row_factors,
                               const std::vector<int64_t>& col_factors, int64_t max_bond, int64_t centre);

// The matrix [I, J] (or [E, I, J] when any core is stacked) a chain of MPO cores stands for.
torch::Tensor mpo_to_matrix(const std::vector<torch::Tensor>& cores, const std::vector<int64_t>& row_factors,
                            const std::vector<int64_t>& col_factors);

}  // namespace moelab
