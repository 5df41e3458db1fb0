#include "moelab/dispatch/dispatch_plan.h"

#include <cmath>

namespace moelab {

DispatchPlan make_dispatch_plan(const Routing& routing, int64_t num_experts, double capacity_factor) {
  const auto& expert_index = routing.expert_index;  // [N, K]
  TORCH_CHECK(expert_index.dim() == 2, "routing.expert_index must be [N, K], got ", expert_index.sizes());
  const int64_t num_tokens = expert_index.size(0);
  const int64_t k = expert_index.size(1);

  // Slot-major flattening: all first choices, then all second choices... A stable sort by expert
  // keeps that order inside each expert's block, which is the priority capacity dropping uses.
  const auto flat_expert = expert_index.t().reshape({-1});                 // [N*K]
  const auto flat_weight = routing.gate_weight.t().reshape({-1});          // [N*K]
  auto [sorted_expert, order] = flat_expert.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto assigned = torch::bincount(flat_expert, /*weights=*/{}, /*minlength=*/num_experts);  // [E]

  DispatchPlan plan;
  plan.num_tokens = num_tokens;
  plan.num_assignments = num_tokens * k;
  plan.assigned_per_expert = assigned;
  const auto assigned_cpu = assigned.to(torch::kCPU);
  const auto* assigned_ptr = assigned_cpu.data_ptr<int64_t>();
  plan.rows_per_expert.assign(assigned_ptr, assigned_ptr + num_experts);

  if (capacity_factor > 0) {
    plan.capacity = static_cast<int64_t>(
        std::ceil(capacity_factor * static_cast<double>(num_tokens * k) / static_cast<double>(num_experts)));
    // Rank of each sorted row inside its expert's block; rows at rank >= capacity are dropped.
    const auto block_start = assigned.cumsum(0) - assigned;                                   // [E]
    const auto rank = torch::arange(sorted_expert.size(0), order.options()) - block_start.index_select(0, sorted_expert);
    const auto keep = rank < plan.capacity;
    order = order.masked_select(keep);
    sorted_expert = sorted_expert.masked_select(keep);
    for (auto& rows : plan.rows_per_expert) rows = std::min(rows, plan.capacity);
  }
  int64_t kept = 0;
  for (auto rows : plan.rows_per_expert) kept += rows;
  plan.num_dropped = plan.num_assignments - kept;

  plan.token_index = order.remainder(num_tokens);
  plan.expert_of_row = sorted_expert;
  plan.slot_weight = flat_weight.index_select(0, order);
  return plan;
}

torch::Tensor dispatch_rows(const torch::Tensor& x, const DispatchPlan& plan) {
  return x.index_select(0, plan.token_index);
}

torch::Tensor combine_rows(const torch::Tensor& rows, const DispatchPlan& plan) {
  auto out = torch::zeros({plan.num_tokens, rows.size(1)}, rows.options());
  return out.index_add(0, plan.token_index, rows * plan.slot_weight.unsqueeze(1));
}

}  // namespace moelab
