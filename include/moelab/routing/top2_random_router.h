// GShard's top-2 gating (Lepikhin et al. 2020, algorithm 1): the first expert is always used; the
// second is used with probability min(1, 2 * g2), where g1, g2 are the two largest softmax
// probabilities renormalised to g1 + g2 = 1. A token that loses its second expert keeps weight g1
// on the first (as GShard does; renormalising to 1 would cut the gate's gradient for that token).
// In evaluation both experts are always used, so the model is deterministic.
#pragma once
#include "moelab/routing/linear_gate_router.h"

namespace moelab {

class Top2RandomRouter : public LinearGateRouter {
 public:
  explicit Top2RandomRouter(const RouterOptions& options);
  int64_t num_slots() const override { return 2; }
  // Expected experts per token in training is below 2; FLOPs and parameters count the worst case.

 protected:
  Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) override;
  const char* name() const override { return "Top2RandomRouter"; }
};

}  // namespace moelab
