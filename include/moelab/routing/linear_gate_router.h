// The part most routers share: a linear gate W_g [D, E] giving one logit per expert. Routers that
// derive from it differ only in how they turn logits into (expert, weight) slots.
//
// Shape legend: N tokens, D model width, E experts, K slots.
#pragma once
#include "moelab/routing/router_options.h"

namespace moelab {

class LinearGateRouter : public Router {
 public:
  // zero_init: start W_g at zero (Shazeer et al. 2017; equal expected load for noisy gates). Routers
  // without noise would tie every logit at zero and always pick the same experts, so they start
  // from N(0, 0.1 / D) as Switch Transformers do.
  LinearGateRouter(const RouterOptions& options, bool zero_init);

  int64_t num_experts() const override { return options.num_experts(); }
  int64_t num_slots() const override { return options.k(); }
  int64_t flops_per_token() const override { return 2 * options.model_dim() * options.num_experts(); }
  void pretty_print(std::ostream& stream) const override;

  RouterOptions options;
  torch::Tensor w_gate;  // [D, E]

 protected:
  // x W_g in float32 (double stays double), [N, E].
  torch::Tensor logits(const torch::Tensor& x) const;
  // x [W_g | w_beside] in one product, [N, E + columns of w_beside]: a second gate's logits (the
  // noise scale's) for the cost of one wider GEMM instead of two, forward and backward.
  torch::Tensor logits_beside(const torch::Tensor& x, const torch::Tensor& w_beside) const;
  // after_step's load must be this router's [E]: throws moelab::Error otherwise.
  void check_step_load(const torch::Tensor& chosen_per_expert) const;
  virtual const char* name() const = 0;
};

// Float32 routing math: reduced-precision input is promoted; float32 and double pass unchanged.
torch::Tensor routing_precision(const torch::Tensor& x);

// A Routing of these slots (kNoExpert marks an empty one) over num_experts experts.
Routing routing_from_slots(const torch::Tensor& expert_index, const torch::Tensor& gate_weight, int64_t num_experts);

}  // namespace moelab
