// Switch routing (Fedus et al. 2021): one expert per token, the argmax of softmax(x W_g); the
// expert's output is scaled by that probability, so the gate still receives a gradient. Pair it
// with moe.balance.switch (the Switch auxiliary loss) and a capacity factor.
#pragma once
#include "moelab/routing/linear_gate_router.h"

namespace moelab {

class SwitchRouter : public LinearGateRouter {
 public:
  explicit SwitchRouter(const RouterOptions& options);
  int64_t num_slots() const override { return 1; }

 protected:
  Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) override;
  const char* name() const override { return "SwitchRouter"; }
};

}  // namespace moelab
