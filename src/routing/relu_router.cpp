#include "moelab/routing/relu_router.h"

#include "moelab/util/error.h"

namespace moelab {

ReluRouter::ReluRouter(const RouterOptions& options) : LinearGateRouter(options, /*zero_init=*/false) {
  check_k_fits(options);
  if (options.l1_init() <= 0) fail("moe.relu_l1_init must be > 0, got {}", options.l1_init());
  if (options.l1_rate() <= 1) fail("moe.relu_l1_rate must be > 1, got {}", options.l1_rate());
  l1_coefficient = register_buffer("l1_coefficient", torch::tensor(options.l1_init(), torch::kDouble));
}

Routing ReluRouter::compute(const torch::Tensor& x, const torch::Tensor&) {
  const auto clean = logits(x);
  const auto gates = torch::relu(clean);
  const int64_t tokens = clean.size(0), experts = options.num_experts();
  torch::Tensor active, index;
  {
    torch::NoGradGuard no_grad;
    active = clean.detach() > 0;
    index = torch::arange(experts, clean.options().dtype(torch::kInt64))
                .expand({tokens, experts})
                .masked_fill(active.logical_not(), kNoExpert)
                .contiguous();
  }
  Routing routing = routing_from_slots(index, gates, experts);
  routing.logits = clean;
  routing.probs = torch::softmax(clean, 1);
  if (tokens > 0) {
    const double scale = static_cast<double>(experts) / static_cast<double>(options.k() * tokens);
    const auto frequency = active.to(gates.scalar_type()).sum(0) * scale;  // f_e, 1 when balanced at k
    const auto l1 = (gates.mean(0) * frequency).sum();
    routing.loss_terms["relu_l1"] = l1.detach();
    routing.router_loss = l1 * l1_coefficient.to(l1.scalar_type());
  }
  return routing;
}

void ReluRouter::after_step(const torch::Tensor& chosen_per_expert, int64_t tokens) {
  if (!chosen_per_expert.defined() || tokens <= 0) return;
  check_step_load(chosen_per_expert);
  torch::NoGradGuard no_grad;
  // Decided on the device, so that a step does not wait for the GPU to read the load back. Whole
  // counts against k x tokens, both exact: a division (CUDA multiplies by the reciprocal) could
  // miss "exactly k experts per token" by a bit.
  const auto chosen = chosen_per_expert.detach().to(l1_coefficient.device(), torch::kDouble).sum();
  const double target = static_cast<double>(options.k()) * static_cast<double>(tokens);
  const auto coefficient = l1_coefficient.clone();
  l1_coefficient.copy_(torch::where(chosen > target, coefficient * options.l1_rate(),
                                    torch::where(chosen < target, coefficient / options.l1_rate(), coefficient)));
}

}  // namespace moelab
