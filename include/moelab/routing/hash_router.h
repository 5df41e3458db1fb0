// Hash routing (Roller et al. 2021, "Hash Layers For Large Sparse Models"): a fixed hash of the
// token id picks the expert. Nothing is learned; it is the no-learning baseline for the other
// routers. With k > 1 a token goes to k consecutive experts after its hashed one, each weighted 1/k.
// Needs the token ids passed through the layer.
#pragma once
#include "moelab/routing/router_options.h"

namespace moelab {

// The fixed hash (a 64-bit finaliser), exposed for tests.
int64_t hash_expert(int64_t token_id, int64_t num_experts);

class HashRouter : public Router {
 public:
  explicit HashRouter(const RouterOptions& options);

  int64_t num_experts() const override { return options.num_experts(); }
  int64_t num_slots() const override { return options.k(); }
  int64_t flops_per_token() const override { return 0; }
  bool needs_token_ids() const override { return true; }
  bool has_logits() const override { return false; }
  void pretty_print(std::ostream& stream) const override;

  RouterOptions options;

 protected:
  Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) override;
};

}  // namespace moelab
