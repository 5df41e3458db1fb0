// Dispatch: turns a Routing into a plan that groups token-slot pairs by expert, so each expert's
// tokens are one contiguous block of rows and an expert bank can run one matrix product per expert.
//
// Shape legend: N tokens, D width, E experts, K slots, M kept token-slot rows (M <= N*K).
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "moelab/types/routing.h"

namespace moelab {

struct DispatchPlan {
  torch::Tensor token_index;    // [M] int64, source token of each row, rows grouped by expert
  torch::Tensor slot_weight;    // [M] float, the row's gate weight (differentiable)
  torch::Tensor expert_of_row;  // [M] int64, non-decreasing
  torch::Tensor slot_position;  // [M] int64, the row's slot-major position k * N + token
  std::vector<int64_t> rows_per_expert;  // [E] rows kept per expert, sums to M
  torch::Tensor assigned_per_expert;     // [E] int64, token-slots routed to each expert before capacity
  int64_t num_tokens = 0;
  int64_t num_assignments = 0;  // non-empty token-slots (N*K for token-choice routers)
  int64_t num_dropped = 0;      // assignments beyond an expert's capacity
  int64_t capacity = 0;         // rows per expert allowed; 0 = dropless
};

// Which token-slots an over-full expert keeps.
enum class DropPolicy {
  kPosition,  // first-choice slots before second choices, earlier tokens before later ones (GShard, Switch)
  kWeight,    // the slots with the largest gate weights
  // Batch-prioritised routing (V-MoE, Riquelme et al. 2021): first choices before second choices,
  // and within each choice tokens in order of their largest gate weight (ties: earlier first).
  kPriority,
  // Every choice of an earlier token before any choice of a later one: a token's slots depend only
  // on earlier tokens, which keeps a causal model causal (rows [T*B] put earlier positions first).
  kToken,
};

// capacity_factor <= 0: dropless. Otherwise each expert keeps at most
// ceil(capacity_factor * N * K / E) rows, chosen by `drop`. Dropped slots contribute nothing (the
// model's residual carries the token past the layer). Empty slots (kNoExpert) are skipped.
DispatchPlan make_dispatch_plan(const Routing& routing, int64_t num_experts, double capacity_factor,
                                DropPolicy drop = DropPolicy::kPosition);

// ceil(capacity_factor * assignments / E): rows one expert may take (GShard / Switch).
int64_t expert_capacity(double capacity_factor, int64_t num_assignments, int64_t num_experts);

// "position", "weight" or "priority" (kToken is chosen by the MoE layer, not by config); throws
// moelab::Error otherwise.
DropPolicy parse_drop_policy(const std::string& name);
const char* drop_policy_name(DropPolicy policy);

// x [N, D] -> rows [M, D] in plan order.
torch::Tensor dispatch_rows(const torch::Tensor& x, const DispatchPlan& plan);

// rows [M, D] -> [N, D]: each row scaled by its gate weight and summed back into its token.
torch::Tensor combine_rows(const torch::Tensor& rows, const DispatchPlan& plan);

}  // namespace moelab
