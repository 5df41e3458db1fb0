// Per-expert biases on rows grouped by expert, with the activation that follows them, fused: the
// elementwise work an expert bank does around its grouped products. The unfused form materialises
// bias.index_select(0, expert_of_row) as a full [M, W] tensor, adds it, applies ReLU, and in the
// backward masks the gradient and scatters it back with index_add: five passes over [M, W]. Here the
// forward is one pass (read x, write the result) and the backward one more (the masked gradient
// and every expert's bias gradient, summed from its own block while the block is in cache).
//
// Shape legend: M rows (grouped by expert, as grouped_matmul's), E experts, W width.
#pragma once
#include <torch/types.h>

#include "moelab/dispatch/dispatch_plan.h"

namespace moelab {

enum class BiasActivation { kNone, kRelu };

// activation(x + bias[e]) for every row of expert e's block. x: [M, W], bias: [E, W]; the blocks
// are plan.rows_per_expert (plan.expert_of_row off the CPU). Differentiable in x and bias
// (hand-written backward on the CPU, checked against finite differences). The result has the promoted type of x and bias, as the
// unfused add has (under autocast a bf16 product plus a float32 bias gives float32). Off the CPU, and
// for type pairs other than equal types or bf16 x with a float32 bias, it runs the reference.
torch::Tensor grouped_bias(const torch::Tensor& x, const torch::Tensor& bias, const DispatchPlan& plan,
                           BiasActivation activation);

// The obviously-correct twin from LibTorch ops (index_select, add, relu): the test oracle.
// expert_of_row: [M] int64, each row's expert.
torch::Tensor grouped_bias_reference(const torch::Tensor& x, const torch::Tensor& bias, const torch::Tensor& expert_of_row,
                                     BiasActivation activation);

}  // namespace moelab
