// What a router hands to dispatch: for each token, K (expert, weight) slots, plus what the
// balancing losses and the statistics need. A plain struct so routers, dispatch and expert banks can
// be swapped independently (../shared/DESIGN.md).
//
// Shape legend: N tokens, D model width, E experts, K slots per token.
#pragma once
#include <torch/nn/module.h>
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

// Every router is a module that maps token features (and, for hash routing, token ids) to a Routing.
class Router : public torch::nn::Module {
 public:
  // x: [N, D]; token_ids: [N] int64 or undefined. Routing math runs in float32 whatever x's dtype is
  // (it is promoted; double stays double for gradient checks).
  Routing route(const torch::Tensor& x, const torch::Tensor& token_ids = {});

  virtual int64_t num_experts() const = 0;
  virtual int64_t num_slots() const = 0;  // K: columns of expert_index
  // Experts a token is processed by on average (for active parameters and FLOPs). Equal to K for
  // token-choice routers; expert choice gives capacity_factor * k.
  virtual double experts_per_token() const { return static_cast<double>(num_slots()); }
  // FLOPs (2 x multiply-adds) per token spent computing gates at inference.
  virtual int64_t flops_per_token() const = 0;
  // True if the router has Gaussian gate noise, and so a smooth load estimate while training
  // (unless k = E, where every expert gets every token and the load loss is 0 anyway).
  virtual bool has_smooth_load() const { return false; }
  virtual bool needs_token_ids() const { return false; }
  // False for routers that compute no logits (hash): the switch and z losses do not apply.
  virtual bool has_logits() const { return true; }
  // True if the router itself fills every expert to its capacity (expert choice): dispatch then
  // has nothing to drop.
  virtual bool fills_capacity() const { return false; }

 protected:
  virtual Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) = 0;
};

}  // namespace moelab
