// Noisy top-k gating with trainable noise (Shazeer et al. 2017, eq. 3-5):
//   H(x)_e = (x W_g)_e + N(0, 1) * softplus((x W_noise)_e)      (noise only while training)
//   G(x)   = softmax(KeepTopK(H(x), k))
// W_g and W_noise start at zero, as in the paper, so every expert starts with equal expected load.
// While training it also returns the smooth load estimate the load loss needs (appendix A).
//
// Shape legend: N tokens, D model width, E experts, K slots.
#pragma once
#include "moelab/routing/linear_gate_router.h"

namespace moelab {

struct NoisyTopKGate {
  torch::Tensor expert_index;  // [N, K]
  torch::Tensor gate_weight;   // [N, K], softmax over the kept logits
  // Defined only when noise was added (with K = E both are exact constants):
  torch::Tensor prob_in_top_k;  // [N, E] smooth P(expert e among token n's top k)
  torch::Tensor smooth_load;    // [E] its sum over tokens
};

// softplus(noise_logits) + epsilon: eq. 4's trainable noise scale from the noise logits x W_noise,
// however the product was computed (one matmul here, a grouped product in the hierarchical router).
torch::Tensor noise_std_from_logits(const torch::Tensor& noise_logits, double epsilon);

// noise_std_from_logits(x W_noise) for one gate: W_noise [D, E] gives [N, E].
torch::Tensor noise_scale(const torch::Tensor& x, const torch::Tensor& w_noise, double epsilon);

// The gate of eq. 3-5 given clean logits and (when noise is added) the noise standard deviation.
// noise_std undefined = no noise. Shared by the flat and the hierarchical router.
NoisyTopKGate noisy_top_k_gate(const torch::Tensor& clean_logits, const torch::Tensor& noise_std, int64_t k);

class NoisyTopKRouter : public LinearGateRouter {
 public:
  explicit NoisyTopKRouter(const RouterOptions& options);
  bool has_smooth_load() const override { return options.noisy(); }

  torch::Tensor w_noise;  // [D, E]

 protected:
  Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) override;
  const char* name() const override { return "NoisyTopKRouter"; }
};

}  // namespace moelab
