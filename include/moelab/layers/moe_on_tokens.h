// An MoE layer applied to the real tokens of a padded batch only: padded positions never reach the
// router, so they count in no routing statistic, balancing loss or expert capacity, and their
// output is zero. The layer is told where the real tokens sit in their sequences (Soft MoE and the
// sequence-level balance loss need it).
//
// Shape legend: T positions, B sequences, D model width.
#pragma once
#include "moelab/layers/moe_layer.h"

namespace moelab {

// x [T, B, D] time-major; token_ids [T, B] (for the hash router) or undefined; padding [T, B] (or
// flat [T * B]) bool, true at padded positions, or undefined when there is none. The output's rows
// are [T * B, D], zero at padding.
MoEOutput moe_on_tokens(MoELayer& moe, const torch::Tensor& x, const torch::Tensor& token_ids,
                        const torch::Tensor& padding);

}  // namespace moelab
