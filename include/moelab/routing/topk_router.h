// Top-k over a softmax of all experts, in the two variants of the gating literature:
//   "topk"       naive top-k: keep the k largest softmax probabilities as they are (they sum to < 1);
//   "topk_mask"  top-k with the kept weights renormalised to sum to 1 (equivalently, a softmax over
//                the k kept logits).
#pragma once
#include "moelab/routing/linear_gate_router.h"

namespace moelab {

class TopKRouter : public LinearGateRouter {
 public:
  TopKRouter(const RouterOptions& options, bool renormalize);

  const bool renormalize;

 protected:
  Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) override;
  const char* name() const override { return renormalize ? "TopKMaskRouter" : "TopKRouter"; }
};

}  // namespace moelab
