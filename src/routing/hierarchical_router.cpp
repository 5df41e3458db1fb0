#include "moelab/routing/hierarchical_router.h"

#include "moelab/balance/importance_loss.h"
#include "moelab/dispatch/dispatch_plan.h"
#include "moelab/dispatch/grouped_matmul.h"
#include "moelab/routing/linear_gate_router.h"
#include "moelab/routing/noisy_topk_router.h"
#include "moelab/util/error.h"

namespace moelab {

HierarchicalRouter::HierarchicalRouter(const RouterOptions& options_) : options(options_) {
  const int64_t e = options.num_experts(), g = options.groups();
  if (e < 1) fail("moe.experts must be >= 1 for a router, got {}", e);
  if (g < 1) fail("moe.groups must be >= 1 for router 'hierarchical', got {}", g);
  if (e % g != 0) fail("router 'hierarchical': moe.groups = {} does not divide moe.experts = {}", g, e);
  if (options.group_k() < 1 || options.group_k() > g)
    fail("router 'hierarchical': moe.group_k must be in [1, moe.groups = {}], got {}", g, options.group_k());
  if (options.k() < 1 || options.k() > e / g)
    fail("router 'hierarchical': moe.k (experts per chosen group) must be in [1, {}], got {}", e / g, options.k());
  const int64_t d = options.model_dim(), m = e / g;
  // Zero initialisation as in the flat noisy gate: equal expected load everywhere at the start.
  primary_gate = register_parameter("primary_gate", torch::zeros({d, g}));
  primary_noise = register_parameter("primary_noise", torch::zeros({d, g}));
  secondary_gate = register_parameter("secondary_gate", torch::zeros({g, d, m}));
  secondary_noise = register_parameter("secondary_noise", torch::zeros({g, d, m}));
}

int64_t HierarchicalRouter::flops_per_token() const {
  return 2 * options.model_dim() * (options.groups() + options.group_k() * experts_per_group());
}

bool HierarchicalRouter::has_smooth_load() const { return options.noisy(); }

Routing HierarchicalRouter::compute(const torch::Tensor& x_in, const torch::Tensor&) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == options.model_dim(), "router expects [N, ", options.model_dim(),
              "] input, got ", x_in.sizes());
  const auto x = routing_precision(x_in);
  const auto dtype = x.scalar_type();
  const int64_t n = x.size(0), g = options.groups(), m = experts_per_group(), k1 = options.group_k(),
                k2 = options.k();
  const bool noisy = is_training() && options.noisy();

  // Primary gate over groups.
  const auto primary_logits = x.mm(primary_gate.to(dtype));  // [N, G]
  const auto primary = noisy_top_k_gate(
      primary_logits, noisy ? noise_scale(x, primary_noise, options.noise_epsilon()) : torch::Tensor(), k1);

  // Secondary gates only for the chosen (token, group) pairs: the pairs are dispatched by group
  // like tokens to experts, and each group's gate runs as one product of a grouped matmul. Nothing
  // of size [N, E] is built, so memory and FLOPs stay linear in E when N grows with it.
  const auto chosen_group = primary.expert_index;  // [N, K1]
  Routing pairs;
  pairs.expert_index = chosen_group;
  pairs.gate_weight = primary.gate_weight;
  pairs.num_experts = g;
  const auto plan = make_dispatch_plan(pairs, g, /*capacity_factor=*/0.0);
  const auto pair_rows = dispatch_rows(x, plan);  // [N*K1, D] grouped by group
  // Row r of the plan is slot-major position j * N + n; the gates below want token-major n * K1 + j.
  const auto token_major = plan.token_index * k1 + plan.slot_position.div(n, "floor");
  const auto back_to_token_major = torch::empty_like(token_major).scatter_(
      0, token_major, torch::arange(token_major.size(0), token_major.options()));
  auto per_pair = [&](const torch::Tensor& weight) {  // [G, D, M] -> [N*K1, M]
    return grouped_matmul(pair_rows, weight.to(dtype), plan.rows_per_expert).index_select(0, back_to_token_major);
  };
  const auto secondary_logits = per_pair(secondary_gate);
  torch::Tensor secondary_std;
  if (noisy) secondary_std = noise_std_from_logits(per_pair(secondary_noise), options.noise_epsilon());
  const auto secondary = noisy_top_k_gate(secondary_logits, secondary_std, k2);  // [N*K1, K2]

  const auto group_offset = (chosen_group.reshape({n * k1, 1}) * m);
  const auto expert_index = (secondary.expert_index + group_offset).reshape({n, k1 * k2});
  const auto gate_weight = (secondary.gate_weight * primary.gate_weight.reshape({n * k1, 1})).reshape({n, k1 * k2});
  Routing routing = routing_from_slots(expert_index, gate_weight, options.num_experts());

  // Flat logits whose softmax is P(group) * P(expert | group) need every group's secondary gate:
  // [N, E], so only when a loss asks for them (z, switch). Without them the statistics have no
  // routing entropy for this router.
  if (options.balance().z > 0 || options.balance().switch_loss > 0) {
    const auto all_secondary = torch::matmul(x.unsqueeze(0), secondary_gate.to(dtype)).permute({1, 0, 2});  // [N, G, M]
    routing.logits = (primary_logits.unsqueeze(2) + torch::log_softmax(all_secondary, 2)).reshape({n, g * m});
    routing.probs = torch::softmax(routing.logits, 1);
  }

  if (noisy) {
    // Appendix B: Load_H(g, m) = Load_primary(g) * Load_g(m) / |X_g|, with Load_g summed over the
    // tokens sent to group g.
    const auto group_rows = chosen_group.reshape({n * k1});
    const auto per_group_load =
        torch::zeros({g, m}, secondary.prob_in_top_k.options()).index_add(0, group_rows, secondary.prob_in_top_k);
    const auto tokens_per_group =
        count_slots_per_expert(group_rows, g).to(dtype).clamp_min(1.0).unsqueeze(1);
    routing.smooth_load = (primary.smooth_load.unsqueeze(1) * per_group_load / tokens_per_group).reshape({g * m});
  }

  // The primary gate's own balancing losses.
  const auto importance = cv_squared(expert_importance(pairs));
  auto router_loss = options.balance().importance * importance;
  routing.loss_terms["importance_primary"] = importance.detach();
  if (noisy) {
    const auto load = cv_squared(primary.smooth_load);
    router_loss = router_loss + options.balance().load * load;
    routing.loss_terms["load_primary"] = load.detach();
  }
  routing.router_loss = router_loss;
  return routing;
}

void HierarchicalRouter::pretty_print(std::ostream& stream) const {
  stream << "moelab::HierarchicalRouter(groups=" << options.groups() << " x " << experts_per_group()
         << ", group_k=" << options.group_k() << ", k=" << options.k() << ")";
}

}  // namespace moelab
