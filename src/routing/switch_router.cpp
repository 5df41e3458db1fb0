#include "moelab/routing/switch_router.h"

#include "moelab/util/error.h"

namespace moelab {

SwitchRouter::SwitchRouter(const RouterOptions& options) : LinearGateRouter(options, /*zero_init=*/false) {
  if (options.k() != 1) fail("router 'switch' sends each token to one expert; set moe.k = 1 (got {})", options.k());
}

Routing SwitchRouter::compute(const torch::Tensor& x, const torch::Tensor&) {
  const auto clean = logits(x);
  const auto probs = torch::softmax(clean, 1);
  auto [top_prob, top_index] = probs.max(/*dim=*/1, /*keepdim=*/true);  // [N, 1]
  Routing routing = routing_from_slots(top_index, top_prob, options.num_experts());
  routing.logits = clean;
  routing.probs = probs;
  return routing;
}

}  // namespace moelab
