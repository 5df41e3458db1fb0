#include "moelab/routing/expert_choice_router.h"

#include <algorithm>
#include <cmath>

#include "moelab/dispatch/dispatch_plan.h"
#include "moelab/util/error.h"

namespace moelab {

ExpertChoiceRouter::ExpertChoiceRouter(const RouterOptions& options) : LinearGateRouter(options, /*zero_init=*/false) {
  if (!(options.capacity_factor() > 0))
    fail("router 'expert_choice' needs moe.capacity_factor > 0 (tokens per expert = cf * tokens * k / experts), "
         "got {}",
         options.capacity_factor());
}

double ExpertChoiceRouter::experts_per_token() const {
  return std::min(static_cast<double>(options.num_experts()), options.capacity_factor() * options.k());
}

int64_t ExpertChoiceRouter::tokens_per_expert(int64_t num_tokens) const {
  const double cf = !is_training() && options.eval_capacity_factor() > 0 ? options.eval_capacity_factor()
                                                                          : options.capacity_factor();
  return std::min(num_tokens, expert_capacity(cf, num_tokens * options.k(), options.num_experts()));
}

Routing ExpertChoiceRouter::compute(const torch::Tensor& x, const torch::Tensor&) {
  const auto clean = logits(x);
  const auto probs = torch::softmax(clean, 1);  // [N, E]
  const int64_t n = x.size(0), e = options.num_experts();
  if (!is_training() && options.causal()) {
    // A causal model cannot let experts choose among the window's tokens (a token's routing would
    // depend on later ones): each token takes its own top experts by the same affinity, as many as
    // expert choice gives a token on average (cf * k, rounded), with the affinities as gates.
    const double cf = options.eval_capacity_factor() > 0 ? options.eval_capacity_factor() : options.capacity_factor();
    const auto per_token = std::clamp<int64_t>(std::llround(cf * static_cast<double>(options.k())), 1, e);
    auto [top_probs, top_experts] = probs.topk(per_token, /*dim=*/1);  // [N, per_token]
    Routing routing = routing_from_slots(top_experts.contiguous(), top_probs, e);
    routing.logits = clean;
    routing.probs = probs;
    return routing;
  }
  const int64_t c = tokens_per_expert(n);
  auto [top_probs, top_tokens] = probs.t().topk(c, /*dim=*/1);  // [E, C]
  // Slot e of token n holds expert e if expert e chose token n.
  const auto chosen = torch::zeros({e, n}, torch::TensorOptions().dtype(torch::kBool).device(x.device()))
                          .scatter(1, top_tokens, true)
                          .t();  // [N, E]
  const auto experts = torch::arange(e, top_tokens.options()).expand({n, e});
  const auto index = torch::where(chosen, experts, torch::full_like(experts, kNoExpert));
  const auto weight = probs * chosen.to(probs.scalar_type());
  Routing routing = routing_from_slots(index.contiguous(), weight, e);
  routing.logits = clean;
  routing.probs = probs;
  return routing;
}

}  // namespace moelab
