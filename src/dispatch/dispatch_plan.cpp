#include "moelab/dispatch/dispatch_plan.h"

#include <cmath>

#include "moelab/util/error.h"

namespace moelab {

DropPolicy parse_drop_policy(const std::string& name) {
  if (name == "position") return DropPolicy::kPosition;
  if (name == "weight") return DropPolicy::kWeight;
  fail("unknown moe.capacity_drop '{}' (known: position, weight)", name);
}

int64_t expert_capacity(double capacity_factor, int64_t num_assignments, int64_t num_experts) {
  return static_cast<int64_t>(
      std::ceil(capacity_factor * static_cast<double>(num_assignments) / static_cast<double>(num_experts)));
}

DispatchPlan make_dispatch_plan(const Routing& routing, int64_t num_experts, double capacity_factor, DropPolicy drop) {
  const auto& expert_index = routing.expert_index;  // [N, K]
  TORCH_CHECK(expert_index.dim() == 2, "routing.expert_index must be [N, K], got ", expert_index.sizes());
  const int64_t num_tokens = expert_index.size(0);
  const int64_t k = expert_index.size(1);

  // Slot-major flattening: all first choices, then all second choices... Position p holds token
  // p mod N. Empty slots are removed first.
  auto flat_expert = expert_index.t().reshape({-1});         // [N*K]
  auto flat_weight = routing.gate_weight.t().reshape({-1});  // [N*K]
  auto position = torch::arange(num_tokens * k, flat_expert.options());
  const auto used = flat_expert >= 0;
  if (!used.all().item<bool>()) {
    position = position.masked_select(used);
    flat_expert = flat_expert.masked_select(used);
  }
  // Priority order inside each expert's block: slot-major position, or descending weight. A stable
  // sort by expert keeps that order.
  if (drop == DropPolicy::kWeight && capacity_factor > 0) {
    const auto by_weight = std::get<1>(flat_weight.index_select(0, position).detach().sort(
        /*stable=*/true, /*dim=*/0, /*descending=*/true));
    position = position.index_select(0, by_weight);
    flat_expert = flat_expert.index_select(0, by_weight);
  }
  auto [sorted_expert, order] = flat_expert.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto sorted_position = position.index_select(0, order);
  const auto assigned = torch::bincount(flat_expert, /*weights=*/{}, /*minlength=*/num_experts);  // [E]

  DispatchPlan plan;
  plan.num_tokens = num_tokens;
  plan.num_assignments = flat_expert.size(0);
  plan.assigned_per_expert = assigned;
  const auto assigned_cpu = assigned.to(torch::kCPU);
  const auto* assigned_ptr = assigned_cpu.data_ptr<int64_t>();
  plan.rows_per_expert.assign(assigned_ptr, assigned_ptr + num_experts);

  if (capacity_factor > 0) {
    plan.capacity = expert_capacity(capacity_factor, num_tokens * k, num_experts);
    // Rank of each sorted row inside its expert's block; rows at rank >= capacity are dropped.
    const auto block_start = assigned.cumsum(0) - assigned;  // [E]
    const auto rank =
        torch::arange(sorted_expert.size(0), order.options()) - block_start.index_select(0, sorted_expert);
    const auto keep = rank < plan.capacity;
    sorted_position = sorted_position.masked_select(keep);
    sorted_expert = sorted_expert.masked_select(keep);
    for (auto& rows : plan.rows_per_expert) rows = std::min(rows, plan.capacity);
  }
  int64_t kept = 0;
  for (auto rows : plan.rows_per_expert) kept += rows;
  plan.num_dropped = plan.num_assignments - kept;

  plan.slot_position = sorted_position;
  plan.token_index = sorted_position.remainder(num_tokens);
  plan.expert_of_row = sorted_expert;
  plan.slot_weight = flat_weight.index_select(0, sorted_position);
  return plan;
}

torch::Tensor dispatch_rows(const torch::Tensor& x, const DispatchPlan& plan) {
  return x.index_select(0, plan.token_index);
}

torch::Tensor combine_rows(const torch::Tensor& rows, const DispatchPlan& plan) {
  auto out = torch::zeros({plan.num_tokens, rows.size(1)}, rows.options());
  return out.index_add(0, plan.token_index, rows * plan.slot_weight.unsqueeze(1).to(rows.scalar_type()));
}

}  // namespace moelab
