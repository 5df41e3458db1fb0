// ReLU routing (ReMoE; Wang, Chen and Zhu 2024, "ReMoE: Fully Differentiable Mixture-of-Experts
// with ReLU Routing"): gates = ReLU(x W_g), no top-k, so every expert with a positive logit takes the
// token and the gate is differentiable everywhere the routing is. Sparsity comes from an L1 penalty
// whose coefficient adapts every step until the mean number of active experts per token is k:
//
//   gates     = ReLU(x W_g)                                       [N, E]
//   f_e       = E / (k N) * #{tokens with gate_e > 0}              (no gradient)
//   L1 term   = sum_e f_e * mean_t gate_te                         (the paper's balance-refined L1)
//   loss     += lambda * L1 term
//   after each optimizer step: lambda *= alpha if more than k experts were active per token on
//   average over the global batch, lambda /= alpha if fewer (lambda is state: in checkpoints,
//   equal on every rank, untouched by the optimizer).
//
// A token may use anywhere from 0 to E experts: the Routing has E slots, the inactive ones empty.
// Dropless only (capacity is defined in slots per token, which vary here).
//
// Shape legend: N tokens, D model width, E experts.
#pragma once
#include "moelab/routing/linear_gate_router.h"

namespace moelab {

class ReluRouter : public LinearGateRouter {
 public:
  explicit ReluRouter(const RouterOptions& options);

  int64_t num_slots() const override { return options.num_experts(); }
  // The target; the measured mean is in the routing statistics (experts_per_token).
  double experts_per_token() const override { return static_cast<double>(options.k()); }
  bool takes_capacity() const override { return false; }
  void after_step(const torch::Tensor& chosen_per_expert, int64_t tokens) override;

  torch::Tensor l1_coefficient;  // [] float64, lambda

 protected:
  Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) override;
  const char* name() const override { return "ReluRouter"; }
};

}  // namespace moelab
