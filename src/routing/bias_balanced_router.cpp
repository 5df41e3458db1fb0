#include "moelab/routing/bias_balanced_router.h"

#include "moelab/routing/group_limit.h"
#include "moelab/util/error.h"

namespace moelab {

BiasBalancedRouter::BiasBalancedRouter(const RouterOptions& options, bool update_bias)
    : LinearGateRouter(options, /*zero_init=*/false), update_bias_(update_bias) {
  check_k_fits(options);
  if (!update_bias && options.groups() < 2)
    fail("the group_limited router needs moe.groups >= 2 (got {}); with one group it is plain top-k", options.groups());
  check_group_limit(options.num_experts(), options.groups(), options.group_k(), options.k());
  if (options.affinity() != "sigmoid" && options.affinity() != "softmax")
    fail("moe.affinity must be sigmoid or softmax, got '{}'", options.affinity());
  expert_bias = register_buffer("expert_bias", torch::zeros({options.num_experts()}));
}

Routing BiasBalancedRouter::compute(const torch::Tensor& x, const torch::Tensor&) {
  const auto clean = logits(x);
  const auto probs = torch::softmax(clean, 1);  // what the switch and z losses read, if also enabled
  const auto affinity = options.affinity() == "sigmoid" ? torch::sigmoid(clean) : probs;
  torch::Tensor chosen;
  {
    // The bias decides which experts, never how much: no gradient flows through the choice.
    torch::NoGradGuard no_grad;
    auto score = affinity.detach() + expert_bias.to(affinity.scalar_type());
    if (options.groups() > 1) score = keep_top_groups(score, options.groups(), options.group_k());
    chosen = std::get<1>(score.topk(options.k(), 1));
  }
  const auto picked = affinity.gather(1, chosen);
  const auto weight = picked / picked.sum(1, /*keepdim=*/true) * options.route_scale();
  Routing routing = routing_from_slots(chosen.contiguous(), weight, options.num_experts());
  routing.logits = clean;
  routing.probs = probs;
  return routing;
}

void BiasBalancedRouter::after_step(const torch::Tensor& chosen_per_expert, int64_t) {
  if (!update_bias_ || !chosen_per_expert.defined() || options.bias_update_rate() == 0) return;
  check_step_load(chosen_per_expert);
  torch::NoGradGuard no_grad;
  const auto load = chosen_per_expert.detach().to(expert_bias.device(), torch::kDouble);
  expert_bias.add_(((load.mean() - load).sign() * options.bias_update_rate()).to(expert_bias.scalar_type()));
}

}  // namespace moelab
