#include "moelab/routing/topk_router.h"

#include "moelab/util/error.h"

namespace moelab {

TopKRouter::TopKRouter(const RouterOptions& options, bool renormalize_)
    : LinearGateRouter(options, /*zero_init=*/false), renormalize(renormalize_) {
  check_k_fits(options);
}

Routing TopKRouter::compute(const torch::Tensor& x, const torch::Tensor&) {
  const auto clean = logits(x);
  const auto probs = torch::softmax(clean, 1);
  auto [top_probs, top_index] = probs.topk(options.k(), /*dim=*/1);
  const auto weight = renormalize ? top_probs / top_probs.sum(1, /*keepdim=*/true) : top_probs;
  Routing routing = routing_from_slots(top_index.contiguous(), weight, options.num_experts());
  routing.logits = clean;
  routing.probs = probs;
  return routing;
}

}  // namespace moelab
