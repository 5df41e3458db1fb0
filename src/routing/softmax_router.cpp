#include "moelab/routing/softmax_router.h"

namespace moelab {

SoftmaxRouter::SoftmaxRouter(const RouterOptions& options) : LinearGateRouter(options, /*zero_init=*/false) {}

Routing SoftmaxRouter::compute(const torch::Tensor& x, const torch::Tensor&) {
  const auto clean = logits(x);
  const auto probs = torch::softmax(clean, 1);
  const auto every_expert =
      torch::arange(options.num_experts(), torch::TensorOptions().dtype(torch::kInt64).device(x.device()))
          .expand({x.size(0), options.num_experts()})
          .contiguous();
  Routing routing = routing_from_slots(every_expert, probs, options.num_experts());
  routing.logits = clean;
  routing.probs = probs;
  return routing;
}

}  // namespace moelab
