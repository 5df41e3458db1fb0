// Grouped matrix product over rows grouped by expert: rows [offset_e, offset_e + rows_e) of x are
// multiplied by weight[e]. One GEMM per expert that received rows; the backward writes one gradient
// buffer for the stacked weight (no per-expert dense gradients, no O(E^2) traffic).
//
// Shape legend: M rows, E experts, I input width, O output width.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace moelab {

// x: [M, I], weight: [E, I, O], rows_per_expert: E counts summing to M. Returns [M, O].
// Differentiable in x and weight (hand-written backward, checked against finite differences).
torch::Tensor grouped_matmul(const torch::Tensor& x, const torch::Tensor& weight,
                             const std::vector<int64_t>& rows_per_expert);

// The obviously-correct twin: the same product built from autograd ops (slow; the test oracle).
torch::Tensor grouped_matmul_reference(const torch::Tensor& x, const torch::Tensor& weight,
                                       const std::vector<int64_t>& rows_per_expert);

}  // namespace moelab
