// An MoE layer applied to the real tokens of a padded batch only: padded positions never reach the
// router, so they count in no routing statistic, balancing loss or expert capacity, and their
// output is zero.
//
// Shape legend: N positions (padding included), D model width.
#pragma once
#include "moelab/layers/moe_layer.h"

namespace moelab {

// x [N, D]; token_ids [N] (for the hash router); padding [N] bool, true at padded positions, or
// undefined when there is none.
MoEOutput moe_on_tokens(MoELayer& moe, const torch::Tensor& x, const torch::Tensor& token_ids,
                        const torch::Tensor& padding);

}  // namespace moelab
