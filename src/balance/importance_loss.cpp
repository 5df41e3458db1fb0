#include "moelab/balance/importance_loss.h"

namespace moelab {

torch::Tensor cv_squared(const torch::Tensor& values) {
  TORCH_CHECK(values.dim() == 1, "cv_squared expects a 1-D tensor, got ", values.sizes());
  if (values.size(0) <= 1) return torch::zeros({}, values.options());
  // The epsilon keeps the loss finite when every value is zero (no tokens routed at all).
  constexpr double kEpsilon = 1e-10;
  const auto mean = values.mean();
  const auto variance = (values - mean).pow(2).mean();
  return variance / (mean.pow(2) + kEpsilon);
}

torch::Tensor importance_loss(const torch::Tensor& gates) {
  TORCH_CHECK(gates.dim() == 2, "importance_loss expects gates [N, E], got ", gates.sizes());
  return cv_squared(gates.sum(0));
}

}  // namespace moelab
