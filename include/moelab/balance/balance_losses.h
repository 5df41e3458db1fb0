// The balancing losses of the literature, applied to any router's output and summed with weights
// (the `[moe.balance]` config section):
//   importance  CV^2 of the per-expert sums of gate values        (Shazeer et al. 2017, eq. 6-7)
//   load        CV^2 of the smooth per-expert load estimate        (Shazeer et al. 2017, eq. 8-11)
//   switch      E * sum_e f_e * P_e: f_e the fraction of token-slots sent to expert e, P_e the
//               mean router probability of e                      (Fedus et al. 2021, eq. 4-6)
//   z           mean over tokens of logsumexp(logits)^2            (Zoph et al. 2022, ST-MoE eq. 5)
// Everything is computed from the Routing of the current batch: nothing is kept between calls.
//
// Shape legend: N tokens, E experts.
#pragma once
#include <torch/types.h>

#include <map>
#include <string>

#include "moelab/types/routing.h"

namespace moelab {

struct BalanceWeights {
  double importance = 0.0;
  double load = 0.0;
  double switch_loss = 0.0;
  double z = 0.0;
  // DeepSeek-V3's sequence-wise loss (sequence_balance_loss.h); the MoE layer adds it, since only it
  // knows the sequences.
  double sequence = 0.0;
};

struct BalanceResult {
  torch::Tensor aux_loss;  // scalar: the weighted sum, plus the router's own router_loss
  // Unweighted values of every term that can be computed for this routing (detached), for logging:
  // "importance", "load", "switch", "z". "load" is a hard count (no gradient) when the router has no
  // smooth estimate; "switch" and "z" need router logits.
  std::map<std::string, torch::Tensor> terms;
};

// The per-expert sums the importance, load and switch losses are functions of. Pooled over several
// batches (ranks, micro-batches) before the losses are taken, they balance the pooled batch as a
// whole (Qiu et al. 2025, "global-batch" balancing) instead of each batch on its own.
struct BalanceSums {
  torch::Tensor importance;   // [E] gate values summed per expert (differentiable)
  torch::Tensor smooth_load;  // [E] smooth load estimate (differentiable), or undefined
  torch::Tensor counts;       // [E] token-slots per expert (no gradient)
  torch::Tensor prob_sums;    // [E] router probabilities summed over tokens, or undefined (no logits)
  torch::Tensor tokens;       // [] tokens (no gradient)
};

BalanceSums balance_sums(const Routing& routing);

// Every tensor of `local` replaced by pooled + gradient_scale * (local - local.detach()): the value of
// the pooled (detached) sums, with the gradient of this batch's own share scaled by gradient_scale.
// With W ranks averaging their gradients and n micro-batches each weighted 1/n, a scale of W * n
// gives every rank and micro-batch the gradient the pooled loss has with respect to its share.
BalanceSums pooled_sums(const BalanceSums& local, const BalanceSums& pooled, double gradient_scale);

// Packs the sums (detached, float64) into one vector for one all-reduce, and back.
torch::Tensor pack_balance_sums(const BalanceSums& sums);
BalanceSums unpack_balance_sums(const torch::Tensor& packed, const BalanceSums& like);

// Throws moelab::Error if the switch or z weight is set for a routing without logits. A load weight
// with no smooth estimate falls back to the count (no gradient): MoELayer rejects that setting for
// routers that never have one. The importance, load and switch losses read `sums` (this routing's
// own by default); the z-loss and the router's own loss read the routing.
BalanceResult balance_losses(const Routing& routing, const BalanceWeights& weights);
BalanceResult balance_losses(const Routing& routing, const BalanceWeights& weights, const BalanceSums& sums);

// E * sum_e f_e * P_e with f = assigned / sum(assigned) (no gradient) and P = probs.mean(0).
torch::Tensor switch_loss(const torch::Tensor& probs, const torch::Tensor& assigned);

// mean_n logsumexp(logits[n, :])^2.
torch::Tensor z_loss(const torch::Tensor& logits);

// Token-slots per expert from an expert_index [N, K] with kNoExpert for empty slots, [E] float.
torch::Tensor slot_counts(const torch::Tensor& expert_index, int64_t num_experts);

}  // namespace moelab
