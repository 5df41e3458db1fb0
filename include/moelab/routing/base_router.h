// BASE layers (Lewis et al. 2021): in training, tokens are assigned to experts by a balanced
// assignment that maximises the total token-expert affinity x W_g (every expert gets N / E tokens,
// so no balancing loss is needed); in evaluation each token takes its best expert (greedy top-1).
// The expert's output is scaled by sigmoid(affinity), which is how the gate learns.
#pragma once
#include "moelab/routing/linear_gate_router.h"

namespace moelab {

class BaseRouter : public LinearGateRouter {
 public:
  explicit BaseRouter(const RouterOptions& options);
  int64_t num_slots() const override { return 1; }

 protected:
  Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) override;
  const char* name() const override { return "BaseRouter"; }
};

}  // namespace moelab
