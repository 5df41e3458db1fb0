// Auxiliary-loss-free balancing (Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy for
// Mixture-of-Experts"; the router of DeepSeek-V3): experts are balanced by a per-expert bias that
// takes part in *choosing* the top-k and nowhere else, so no balancing gradient pulls against the
// language-model loss.
//
//   affinity s = sigmoid(x W_g) (or softmax), [N, E]
//   chosen     = top-k of (s + b)                 b: [E], a buffer, not a parameter
//   gate       = route_scale * s_chosen / sum(s_chosen)   (the unbiased affinities)
//   after each optimizer step: b_e += rate * sign(mean load - load_e), load counted over the step's
//   global batch (every rank), so b is identical on every rank and saved in checkpoints.
//
// With moe.groups > 1 the choice is also group-limited (DeepSeek-V3, routing/group_limit.h): top-k
// only inside the moe.group_k groups with the best top-2 sums of s + b. The `group_limited` router
// is this class with the bias left at zero (no balancing state): DeepSeek-V2's device-limited
// routing when the affinity is a softmax.
//
// Shape legend: N tokens, D model width, E experts, K slots.
#pragma once
#include "moelab/routing/linear_gate_router.h"

namespace moelab {

class BiasBalancedRouter : public LinearGateRouter {
 public:
  // update_bias = false: the bias stays zero (the group_limited router), which needs groups > 1.
  BiasBalancedRouter(const RouterOptions& options, bool update_bias);
  void after_step(const torch::Tensor& chosen_per_expert, int64_t tokens) override;

  torch::Tensor expert_bias;  // [E] float32

 protected:
  Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) override;
  const char* name() const override { return update_bias_ ? "BiasBalancedRouter" : "GroupLimitedRouter"; }

 private:
  bool update_bias_;
};

}  // namespace moelab
