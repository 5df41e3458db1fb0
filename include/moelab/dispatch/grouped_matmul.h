// Grouped matrix product over rows grouped by expert: rows [offset_e, offset_e + rows_e) of x are
// multiplied by weight[e]. One GEMM per expert that received rows; the backward writes one gradient
// buffer for the stacked weight (no per-expert dense gradients, no O(E^2) traffic).
//
// Shape legend: M rows, E experts, I input width, O output width.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "moelab/dispatch/grouped_path.h"

namespace moelab {

// x: [M, I], weight: [E, I, O], rows_per_expert: E counts summing to M. Returns [M, O].
// Differentiable in x and weight (hand-written backward, checked against finite differences); the
// weight gradient touches only experts that received rows (the others get a zeroed slice).
// `path` kAuto means the process default (grouped_path()), itself measured per shape unless set.
torch::Tensor grouped_matmul(const torch::Tensor& x, const torch::Tensor& weight,
                             const std::vector<int64_t>& rows_per_expert, GroupedPath path = GroupedPath::kAuto);

// Whether GroupedPath::kOneDnn can run here (LibTorch's oneDNN exports dnnl_sgemm); where it cannot,
// that path falls back to LibTorch's mm.
bool onednn_grouped_available();
// Whether GroupedPath::kOneDnn can run bf16 operands here (oneDNN's dnnl_gemm_bf16bf16f32 is
// exported); where it cannot, bf16 on that path runs the loop.
bool onednn_bf16_grouped_available();
// The paths that really run `dtype` on this CPU (elsewhere the onednn and streaming paths run the
// loop): the candidates GroupedPath::kAuto times, in that order.
std::vector<GroupedPath> cpu_grouped_paths(torch::ScalarType dtype);
// Whether this LibTorch has at::_grouped_mm (2.8 and later): GroupedPath::kGroupedMm.
bool grouped_mm_available();

// The obviously-correct twin: the same product built from autograd ops (slow; the test oracle).
torch::Tensor grouped_matmul_reference(const torch::Tensor& x, const torch::Tensor& weight,
                                       const std::vector<int64_t>& rows_per_expert);

}  // namespace moelab
