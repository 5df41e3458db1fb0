#include "moelab/routing/top2_random_router.h"

#include "moelab/util/error.h"

namespace moelab {

Top2RandomRouter::Top2RandomRouter(const RouterOptions& options) : LinearGateRouter(options, /*zero_init=*/false) {
  if (options.k() != 2) fail("router 'top2_random' uses two experts per token; set moe.k = 2 (got {})", options.k());
  if (options.num_experts() < 2) fail("router 'top2_random' needs at least 2 experts, got {}", options.num_experts());
}

Routing Top2RandomRouter::compute(const torch::Tensor& x, const torch::Tensor&) {
  const auto clean = logits(x);
  const auto probs = torch::softmax(clean, 1);
  auto [top_probs, top_index] = probs.topk(2, /*dim=*/1);              // [N, 2]
  auto weight = top_probs / top_probs.sum(1, /*keepdim=*/true);         // g1 + g2 = 1
  auto index = top_index.contiguous();
  if (is_training()) {
    const auto second = weight.select(1, 1).detach();
    const auto keep_second = torch::rand_like(second) < (2.0 * second).clamp_max(1.0);  // [N]
    const auto keep = torch::stack({torch::ones_like(keep_second), keep_second}, 1);   // [N, 2]
    index = torch::where(keep, index, torch::full_like(index, kNoExpert));
    weight = weight * keep.to(weight.scalar_type());
  }
  Routing routing = routing_from_slots(index, weight, options.num_experts());
  routing.logits = clean;
  routing.probs = probs;
  return routing;
}

}  // namespace moelab
