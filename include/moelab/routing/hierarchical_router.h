// Hierarchical MoE gating (Shazeer et al. 2017, appendix B), for thousands of experts: E experts
// in G groups of M = E / G. A primary noisy top-k gate picks group_k groups per token; inside each
// chosen group a secondary noisy top-k gate picks k of its M experts. A token's K = group_k * k
// slots carry the product of the two gate weights.
//
// Balancing: the layer's losses apply to the combined gates (importance over all E experts, load
// with the paper's estimate Load_primary(g) * Load_g(m) / |tokens sent to g|), and this router adds
// the same importance and load losses of the primary gate itself (RouterOptions::balance).
// The secondary gates run only for the chosen groups (a grouped product over (token, group) pairs),
// so nothing of size [N, E] is built. Routing::logits, whose softmax is P(group) * P(expert | group),
// need every group's gate; they are computed only when the z or switch loss is on (the z-loss on
// them regularises the primary gate only).
//
// Shape legend: N tokens, D width, G groups, M experts per group, E = G * M.
#pragma once
#include "moelab/routing/router_options.h"

namespace moelab {

class HierarchicalRouter : public Router {
 public:
  explicit HierarchicalRouter(const RouterOptions& options);

  int64_t num_experts() const override { return options.num_experts(); }
  int64_t num_slots() const override { return options.group_k() * options.k(); }
  // The active path: the primary gate plus the secondary gates of the chosen groups.
  int64_t flops_per_token() const override;
  bool has_smooth_load() const override;
  void pretty_print(std::ostream& stream) const override;
  int64_t experts_per_group() const { return options.num_experts() / options.groups(); }

  RouterOptions options;
  torch::Tensor primary_gate;     // [D, G]
  torch::Tensor primary_noise;    // [D, G]
  torch::Tensor secondary_gate;   // [G, D, M]
  torch::Tensor secondary_noise;  // [G, D, M]

 protected:
  Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) override;
};

}  // namespace moelab
