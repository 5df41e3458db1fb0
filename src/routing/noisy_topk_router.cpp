#include "moelab/routing/noisy_topk_router.h"

#include "moelab/balance/load_loss.h"
#include "moelab/util/error.h"

namespace moelab {

torch::Tensor noise_std_from_logits(const torch::Tensor& noise_logits, double epsilon) {
  return torch::softplus(noise_logits) + epsilon;
}

torch::Tensor noise_scale(const torch::Tensor& x, const torch::Tensor& w_noise, double epsilon) {
  return noise_std_from_logits(torch::matmul(x, w_noise.to(x.scalar_type())), epsilon);
}

NoisyTopKGate noisy_top_k_gate(const torch::Tensor& clean_logits, const torch::Tensor& noise_std, int64_t k) {
  const int64_t num_experts = clean_logits.size(1);
  const bool noisy = noise_std.defined();
  const auto logits = noisy ? clean_logits + torch::randn_like(clean_logits) * noise_std : clean_logits;
  // The (k+1)-th value is needed by the smooth load estimator; topk returns descending order.
  const int64_t num_top = std::min(k + 1, num_experts);
  auto [top_logits, top_index] = logits.topk(num_top, /*dim=*/1);  // [N, K+1]
  NoisyTopKGate gate;
  gate.expert_index = top_index.narrow(1, 0, k).contiguous();
  gate.gate_weight = torch::softmax(top_logits.narrow(1, 0, k), /*dim=*/1);
  if (noisy) {
    // With k = E every expert is chosen with certainty: the exact "estimate" is 1 (no gradient).
    gate.prob_in_top_k = k < num_experts ? prob_in_top_k(clean_logits, logits, noise_std, top_logits, k)
                                         : torch::ones_like(clean_logits);
    gate.smooth_load = gate.prob_in_top_k.sum(0);
  }
  return gate;
}

NoisyTopKRouter::NoisyTopKRouter(const RouterOptions& options) : LinearGateRouter(options, /*zero_init=*/true) {
  check_k_fits(options);
  w_noise = register_parameter("w_noise", torch::zeros({options.model_dim(), options.num_experts()}));
}

Routing NoisyTopKRouter::compute(const torch::Tensor& x, const torch::Tensor&) {
  torch::Tensor clean, noise_std;
  if (is_training() && options.noisy()) {
    // Both gates in one product: at E = 64, k = 1 the layer's six router GEMMs become three (~3 ms
    // of ~112 on 2 cores).
    const int64_t experts = options.num_experts();
    const auto both = logits_beside(x, w_noise);  // [N, 2E]
    clean = both.narrow(1, 0, experts).contiguous();
    noise_std = noise_std_from_logits(both.narrow(1, experts, experts), options.noise_epsilon());
  } else {
    clean = logits(x);
  }
  const auto gate = noisy_top_k_gate(clean, noise_std, options.k());
  Routing routing = routing_from_slots(gate.expert_index, gate.gate_weight, options.num_experts());
  routing.logits = clean;
  routing.probs = torch::softmax(clean, 1);
  routing.smooth_load = gate.smooth_load;
  return routing;
}

}  // namespace moelab
