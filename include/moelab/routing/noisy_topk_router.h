// Noisy top-k gating with trainable noise (Shazeer et al. 2017, eq. 3-5):
//   H(x)_e = (x W_g)_e + N(0, 1) * softplus((x W_noise)_e)      (noise only while training)
//   G(x)   = softmax(KeepTopK(H(x), k))
// with the importance and load balancing losses (eq. 6-11). W_g and W_noise start at zero, as in
// the paper, so every expert starts with equal expected load.
//
// Shape legend: N tokens, D model width, E experts, K slots.
#pragma once
#include <torch/arg.h>

#include "moelab/routing/routing.h"

namespace moelab {

struct NoisyTopKRouterOptions {
  NoisyTopKRouterOptions(int64_t model_dim, int64_t num_experts, int64_t k)
      : model_dim_(model_dim), num_experts_(num_experts), k_(k) {}
  /// Width D of the token features.
  TORCH_ARG(int64_t, model_dim);
  /// Number of experts E.
  TORCH_ARG(int64_t, num_experts);
  /// Experts per token K (1 <= K <= E).
  TORCH_ARG(int64_t, k);
  /// Add trainable Gaussian noise to the logits while training.
  TORCH_ARG(bool, noisy) = true;
  /// Added to softplus(x W_noise) so the noise never vanishes entirely.
  TORCH_ARG(double, noise_epsilon) = 1e-2;
  /// Weight of the importance loss CV^2(sum of gates).
  TORCH_ARG(double, importance_weight) = 0.1;
  /// Weight of the load loss CV^2(smooth load).
  TORCH_ARG(double, load_weight) = 0.1;
};

class NoisyTopKRouter : public Router {
 public:
  explicit NoisyTopKRouter(const NoisyTopKRouterOptions& options);
  void reset();

  Routing route(const torch::Tensor& x) override;
  int64_t num_experts() const override { return options.num_experts(); }
  int64_t num_slots() const override { return options.k(); }
  int64_t flops_per_token() const override { return 2 * options.model_dim() * options.num_experts(); }
  void pretty_print(std::ostream& stream) const override;

  NoisyTopKRouterOptions options;
  torch::Tensor w_gate;   // [D, E]
  torch::Tensor w_noise;  // [D, E]
};

}  // namespace moelab
