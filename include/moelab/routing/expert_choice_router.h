// Expert-choice routing (Zhou et al. 2022): instead of each token picking k experts, each expert
// picks the C tokens with the highest affinity softmax(x W_g)[n, e], with
// C = ceil(capacity_factor * N * k / E). Every expert is exactly full, nothing is dropped, and a
// token is processed by anywhere from 0 to E experts (its empty slots are kNoExpert). The gate
// weight is the affinity. C depends on the batch, so a token's routing does too, also in
// evaluation (a known property of the method). In a causal model that would let a position see later
// tokens, so there (RouterOptions::causal) evaluation routes each token to its own top
// round(cf * k) experts by the same affinity instead.
//
// Shape legend: N tokens, E experts, C tokens per expert.
#pragma once
#include "moelab/routing/linear_gate_router.h"

namespace moelab {

class ExpertChoiceRouter : public LinearGateRouter {
 public:
  explicit ExpertChoiceRouter(const RouterOptions& options);
  int64_t num_slots() const override { return options.num_experts(); }
  double experts_per_token() const override;
  bool fills_capacity() const override { return true; }
  int64_t tokens_per_expert(int64_t num_tokens) const;  // C (uses the evaluation factor in eval mode)

 protected:
  Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) override;
  const char* name() const override { return "ExpertChoiceRouter"; }
};

}  // namespace moelab
