#include "moelab/dispatch/dispatch_plan.h"

#include <algorithm>
#include <cmath>

#include "moelab/util/error.h"

namespace moelab {

DropPolicy parse_drop_policy(const std::string& name) {
  if (name == "position") return DropPolicy::kPosition;
  if (name == "weight") return DropPolicy::kWeight;
  if (name == "priority") return DropPolicy::kPriority;
  fail("unknown moe.capacity_drop '{}' (known: position, weight, priority)", name);
}

const char* drop_policy_name(DropPolicy policy) {
  switch (policy) {
    case DropPolicy::kPosition: return "position";
    case DropPolicy::kWeight: return "weight";
    case DropPolicy::kPriority: return "priority";
    case DropPolicy::kToken: return "token";
  }
  return "?";
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
  // p mod N. Empty slots (kNoExpert) are keyed to a last bin E, which sorts after every expert and
  // is cut off once the counts are known.
  const auto flat_expert = expert_index.t().reshape({-1});   // [N*K]
  const auto flat_weight = routing.gate_weight.t().reshape({-1});  // [N*K]
  auto key = flat_expert.masked_fill(flat_expert < 0, num_experts);  // [N*K] in [0, E]
  auto position = torch::arange(num_tokens * k, flat_expert.options());
  // Priority order inside each expert's block: slot-major position, token-major position, or
  // descending weight. A stable sort by expert keeps that order.
  if (drop == DropPolicy::kToken && capacity_factor > 0 && k > 1) {
    // Token n's slot s sits at s * N + n; list them token by token.
    const auto by_token = (torch::arange(num_tokens, position.options()).unsqueeze(1) +
                           torch::arange(k, position.options()).unsqueeze(0) * num_tokens)
                              .reshape({-1});
    position = by_token;
    key = key.index_select(0, by_token);
  }
  if (drop == DropPolicy::kWeight && capacity_factor > 0) {
    const auto by_weight =
        std::get<1>(flat_weight.detach().sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
    position = position.index_select(0, by_weight);
    key = key.index_select(0, by_weight);
  }
  if (drop == DropPolicy::kPriority && capacity_factor > 0) {
    // A token's priority is its largest gate weight; slot s of the r-th token in that order goes
    // to s * N + r, so every first choice still precedes every second choice.
    const auto priority = std::get<0>(routing.gate_weight.detach().max(1));  // [N]
    const auto by_priority = std::get<1>(priority.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
    const auto order_of_slots = (torch::arange(k, position.options()).unsqueeze(1) * num_tokens +
                                 by_priority.to(torch::kInt64).unsqueeze(0))
                                    .reshape({-1});
    position = order_of_slots;
    key = key.index_select(0, order_of_slots);
  }
  auto [sorted_key, order] = key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto sorted_position = position.index_select(0, order);
  const auto counts = count_slots_per_expert(flat_expert, num_experts);  // [E]
  // The one wait for the device in a dispatch: the host needs the block sizes to cut the rows.
  const auto counts_cpu = counts.to(torch::kCPU);
  const auto* count_ptr = counts_cpu.data_ptr<int64_t>();

  DispatchPlan plan;
  plan.num_tokens = num_tokens;
  plan.assigned_per_expert = counts;
  plan.rows_per_expert.assign(count_ptr, count_ptr + num_experts);
  for (auto rows : plan.rows_per_expert) plan.num_assignments += rows;
  sorted_key = sorted_key.narrow(0, 0, plan.num_assignments);
  sorted_position = sorted_position.narrow(0, 0, plan.num_assignments);

  if (capacity_factor > 0) {
    plan.capacity = expert_capacity(capacity_factor, num_tokens * k, num_experts);
    int64_t kept = 0;
    for (auto rows : plan.rows_per_expert) kept += std::min(rows, plan.capacity);
    if (kept < plan.num_assignments) {
      // Rank of each sorted row inside its expert's block; rows at rank >= capacity are dropped. A
      // stable sort of the drop flags moves the kept rows to the front in their order, and the host
      // already knows how many there are (masked_select would wait for the device to count them).
      const auto assigned = plan.assigned_per_expert;
      const auto block_start = assigned.cumsum(0) - assigned;  // [E]
      const auto rank = torch::arange(plan.num_assignments, order.options()) - block_start.index_select(0, sorted_key);
      const auto dropped = (rank >= plan.capacity).to(torch::kUInt8);
      const auto kept_first = std::get<1>(dropped.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
      const auto kept_rows = kept_first.narrow(0, 0, kept);
      sorted_position = sorted_position.index_select(0, kept_rows);
      sorted_key = sorted_key.index_select(0, kept_rows);
    }
    for (auto& rows : plan.rows_per_expert) rows = std::min(rows, plan.capacity);
    plan.num_dropped = plan.num_assignments - kept;
  }

  plan.slot_position = sorted_position;
  plan.token_index = sorted_position.remainder(num_tokens);
  plan.expert_of_row = sorted_key;
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
