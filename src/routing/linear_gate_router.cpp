#include "moelab/routing/linear_gate_router.h"

#include <cmath>

#include "moelab/util/error.h"

namespace moelab {

torch::Tensor routing_precision(const torch::Tensor& x) {
  if (x.scalar_type() == torch::kDouble || x.scalar_type() == torch::kFloat) return x;
  return x.to(torch::kFloat);
}

Routing routing_from_slots(const torch::Tensor& expert_index, const torch::Tensor& gate_weight, int64_t num_experts) {
  TORCH_CHECK(expert_index.sizes() == gate_weight.sizes(), "expert_index and gate_weight must have one shape");
  Routing routing;
  routing.expert_index = expert_index;
  routing.gate_weight = gate_weight;
  routing.num_experts = num_experts;
  return routing;
}

LinearGateRouter::LinearGateRouter(const RouterOptions& options_, bool zero_init) : options(options_) {
  check_router_sizes(options);
  auto weight = torch::zeros({options.model_dim(), options.num_experts()});
  if (!zero_init) weight.normal_(0.0, std::sqrt(0.1 / static_cast<double>(options.model_dim())));
  w_gate = register_parameter("w_gate", weight);
}

torch::Tensor LinearGateRouter::logits(const torch::Tensor& x) const { return logits_beside(x, torch::Tensor()); }

torch::Tensor LinearGateRouter::logits_beside(const torch::Tensor& x, const torch::Tensor& w_beside) const {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options.model_dim(), "router expects [N, ", options.model_dim(),
              "] input, got ", x.sizes());
  const auto input = routing_precision(x);
  const auto weight = w_beside.defined() ? torch::cat({w_gate, w_beside}, 1) : w_gate;
  return input.mm(weight.to(input.scalar_type()));
}

void LinearGateRouter::check_step_load(const torch::Tensor& chosen_per_expert) const {
  if (chosen_per_expert.numel() != options.num_experts())
    fail("{}: a load of {} experts handed to a router of {}", name(), chosen_per_expert.numel(), options.num_experts());
}

void LinearGateRouter::pretty_print(std::ostream& stream) const {
  stream << "moelab::" << name() << "(dim=" << options.model_dim() << ", experts=" << options.num_experts()
         << ", k=" << options.k() << ")";
}

}  // namespace moelab
