// What a router hands to dispatch: for each token, K (expert, weight) slots, plus what the
// balancing losses and the statistics need. A plain struct at the bottom of the library (types/), so
// that routers, dispatch, balancing losses and expert banks, which all read it, include only
// downwards and can be swapped independently.
//
// Shape legend: N tokens, D model width, E experts, K slots per token.
#pragma once
#include <torch/types.h>

#include <map>
#include <string>

namespace moelab {

// An expert index of -1 marks an empty slot (its weight is 0): expert-choice routing gives a token
// anywhere from 0 to E experts, and GShard's random second expert is sometimes not sent.
inline constexpr int64_t kNoExpert = -1;

struct Routing {
  torch::Tensor expert_index;  // [N, K] int64, chosen experts (kNoExpert = empty slot)
  torch::Tensor gate_weight;   // [N, K] differentiable combine weights, 0 on empty slots
  // E. The dense gate matrix G(x) [N, E] is not kept: with thousands of experts and N growing with
  // E it is O(E^2) memory. dense_gates() builds it where a test or a small E wants it.
  int64_t num_experts = 0;
  // Clean router logits in float32 (before noise), [N, E]; undefined for routers without logits (hash).
  torch::Tensor logits;
  // Softmax of the clean logits over all experts, [N, E]; undefined where logits are.
  torch::Tensor probs;
  // Differentiable estimate of the tokens each expert receives, [E]: only noisy gates in training
  // have one (Shazeer's smooth load). Undefined otherwise.
  torch::Tensor smooth_load;
  // Losses the router adds itself, already weighted (a hierarchical router's primary level);
  // undefined means none.
  torch::Tensor router_loss;
  // Unweighted terms the router computed itself, for logging (detached scalars).
  std::map<std::string, torch::Tensor> loss_terms;
};

// Sum of each expert's gate values over the batch, [E] (Shazeer's Importance(X)); differentiable in
// gate_weight. Equal to dense_gates(routing).sum(0) without the [N, E] matrix.
torch::Tensor expert_importance(const Routing& routing);

// Slots routed to each expert, [E] int64, for any shape of `expert_index` (empty slots, kNoExpert,
// are not counted). Computed where the indices are, without waiting for the device (bincount and
// masked_select both read a size back to the host first).
torch::Tensor count_slots_per_expert(const torch::Tensor& expert_index, int64_t num_experts);

// The dense gate matrix G(x), [N, E]: gate weights scattered into zeros (empty slots add nothing).
// O(N E) memory; for tests and small E.
torch::Tensor dense_gates(const Routing& routing);

// The routing with every slot on an expert >= num_real made empty (kNoExpert, weight 0), over
// num_real experts: null experts (MoELayerOptions::null_experts) cost nothing and add zero. Logits and
// probabilities keep their columns for every expert; the smooth load keeps the real ones.
Routing without_experts_from(const Routing& routing, int64_t num_real);

}  // namespace moelab
