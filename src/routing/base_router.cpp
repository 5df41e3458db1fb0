#include "moelab/routing/base_router.h"

#include "moelab/routing/balanced_assignment.h"
#include "moelab/util/error.h"

namespace moelab {

BaseRouter::BaseRouter(const RouterOptions& options) : LinearGateRouter(options, /*zero_init=*/false) {
  if (options.k() != 1) fail("router 'base' sends each token to one expert; set moe.k = 1 (got {})", options.k());
}

Routing BaseRouter::compute(const torch::Tensor& x, const torch::Tensor&) {
  const auto clean = logits(x);  // [N, E]
  torch::Tensor index;           // [N, 1]
  if (is_training()) {
    index = balanced_assignment(clean).to(x.device()).unsqueeze(1);
  } else {
    index = clean.argmax(/*dim=*/1, /*keepdim=*/true);
  }
  const auto weight = torch::sigmoid(clean.gather(1, index));
  Routing routing = routing_from_slots(index, weight, options.num_experts());
  routing.logits = clean;
  routing.probs = torch::softmax(clean, 1);
  return routing;
}

}  // namespace moelab
