#include "moelab/types/routing.h"

namespace moelab {

namespace {
// Empty slots point at a spare column E that callers cut off.
torch::Tensor column_or_spare(const torch::Tensor& expert_index, int64_t num_experts) {
  return expert_index.masked_fill(expert_index < 0, num_experts);
}
torch::Tensor column_or_spare(const Routing& routing) {
  return column_or_spare(routing.expert_index, routing.num_experts);
}
}  // namespace

torch::Tensor count_slots_per_expert(const torch::Tensor& expert_index, int64_t num_experts) {
  const auto column = column_or_spare(expert_index.reshape({-1}), num_experts).to(torch::kInt64);
  return torch::zeros({num_experts + 1}, column.options())
      .scatter_add_(0, column, torch::ones_like(column))
      .narrow(0, 0, num_experts);
}

torch::Tensor expert_importance(const Routing& routing) {
  TORCH_CHECK(routing.num_experts >= 1, "Routing::num_experts is not set");
  return torch::zeros({routing.num_experts + 1}, routing.gate_weight.options())
      .index_add(0, column_or_spare(routing).reshape({-1}), routing.gate_weight.reshape({-1}))
      .narrow(0, 0, routing.num_experts);
}

torch::Tensor dense_gates(const Routing& routing) {
  TORCH_CHECK(routing.num_experts >= 1, "Routing::num_experts is not set");
  return torch::zeros({routing.expert_index.size(0), routing.num_experts + 1}, routing.gate_weight.options())
      .scatter_add(1, column_or_spare(routing), routing.gate_weight)
      .narrow(1, 0, routing.num_experts);
}

Routing without_experts_from(const Routing& routing, int64_t num_real) {
  TORCH_CHECK(num_real >= 1 && num_real <= routing.num_experts, "without_experts_from: ", num_real,
              " real experts of ", routing.num_experts);
  Routing out = routing;
  const auto null_slot = routing.expert_index >= num_real;
  out.expert_index = routing.expert_index.masked_fill(null_slot, kNoExpert);
  out.gate_weight = routing.gate_weight.masked_fill(null_slot, 0.0);
  out.num_experts = num_real;
  if (routing.smooth_load.defined()) out.smooth_load = routing.smooth_load.narrow(0, 0, num_real);
  return out;
}

}  // namespace moelab
