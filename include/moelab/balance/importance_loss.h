// Importance loss (Shazeer et al. 2017, eq. 6-7): the squared coefficient of variation of the
// per-expert sums of gate values over a batch. Small when every expert receives equal total weight.
#pragma once
#include <torch/types.h>

namespace moelab {

// CV^2 = Var(v) / Mean(v)^2 over the E entries of v (population variance). Zero when E == 1.
torch::Tensor cv_squared(const torch::Tensor& values);

// gates: [N, E] dense gate matrix. Returns CV^2(sum_n gates[n, :]).
torch::Tensor importance_loss(const torch::Tensor& gates);

}  // namespace moelab
