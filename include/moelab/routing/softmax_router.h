// Dense softmax gating: every token goes to every expert, weighted by softmax(x W_g). The "no
// sparsity" reference point (Jacobs et al. 1991; Shazeer et al. 2017's baseline); E slots per token,
// so only sensible for small E.
#pragma once
#include "moelab/routing/linear_gate_router.h"

namespace moelab {

class SoftmaxRouter : public LinearGateRouter {
 public:
  explicit SoftmaxRouter(const RouterOptions& options);
  int64_t num_slots() const override { return options.num_experts(); }

 protected:
  Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) override;
  const char* name() const override { return "SoftmaxRouter"; }
};

}  // namespace moelab
