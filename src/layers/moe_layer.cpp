#include "moelab/layers/moe_layer.h"

#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/util/error.h"

#include <cmath>

namespace moelab {

std::shared_ptr<Router> make_router(const MoELayerOptions& options) {
  return make_router(options.router(), RouterOptions(options.model_dim(), options.num_experts(), options.k())
                                           .noisy(options.noisy())
                                           .noise_epsilon(options.noise_epsilon())
                                           .capacity_factor(options.capacity_factor())
                                           .groups(options.groups())
                                           .group_k(options.group_k())
                                           .balance(options.balance()));
}

std::shared_ptr<ExpertBank> make_expert_bank(const MoELayerOptions& options) {
  if (options.bank() == "ffn") {
    return std::make_shared<FfnExpertBank>(
        FfnExpertBankOptions(options.model_dim(), options.expert_hidden(), options.num_experts()));
  }
  fail("unknown moe.bank '{}' (known: ffn)", options.bank());
}

MoELayerImpl::MoELayerImpl(const MoELayerOptions& options_) : options(options_) { reset(); }

void MoELayerImpl::reset() {
  router = register_module("router", make_router(options));
  experts = register_module("experts", make_expert_bank(options));
  // Say it now rather than at the first training step: the load loss needs a smooth estimate.
  if (options.balance().load > 0 && !router->has_smooth_load())
    fail("moe.balance.load = {} needs noisy gates (router noisy_topk or hierarchical with moe.noisy = true); "
         "router '{}' has none: set moe.balance.load = 0",
         options.balance().load, options.router());
  if ((options.balance().switch_loss > 0 || options.balance().z > 0) && options.router() == "hash")
    fail("moe.balance.switch and moe.balance.z need router logits; router 'hash' has none");
  if (options.jitter() < 0 || options.jitter() >= 1) fail("moe.jitter must be in [0, 1), got {}", options.jitter());
}

MoEOutput MoELayerImpl::forward(const torch::Tensor& x, const torch::Tensor& token_ids) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options.model_dim(), "MoE layer expects [N, ", options.model_dim(),
              "] input, got ", x.sizes());
  auto router_input = x;
  if (is_training() && options.jitter() > 0)
    router_input = x * torch::empty_like(x).uniform_(1.0 - options.jitter(), 1.0 + options.jitter());
  const Routing routing = router->route(router_input, token_ids);
  const double capacity_factor = !is_training() && options.eval_capacity_factor() >= 0
                                     ? options.eval_capacity_factor()
                                     : options.capacity_factor();
  const double dispatch_capacity = router->fills_capacity() ? 0.0 : capacity_factor;
  const DispatchPlan plan = make_dispatch_plan(routing, options.num_experts(), dispatch_capacity, options.capacity_drop());
  const auto rows = experts->forward(dispatch_rows(x, plan), plan);  // [M, D]
  auto balance = balance_losses(routing, options.balance());
  MoEOutput out;
  out.output = combine_rows(rows, plan);
  out.aux_loss = balance.aux_loss;
  out.loss_terms = std::move(balance.terms);
  out.stats = RoutingStats::from(routing, plan);
  return out;
}

int64_t MoELayerImpl::params_total() const {
  int64_t total = 0;
  for (const auto& p : parameters()) total += p.numel();
  return total;
}

int64_t MoELayerImpl::params_active_per_token() const {
  int64_t router_params = 0;
  for (const auto& p : router->parameters()) router_params += p.numel();
  return router_params + static_cast<int64_t>(std::llround(router->experts_per_token() *
                                                           static_cast<double>(experts->params_per_expert())));
}

int64_t MoELayerImpl::flops_per_token() const {
  return router->flops_per_token() + static_cast<int64_t>(std::llround(
                                        router->experts_per_token() * static_cast<double>(experts->flops_per_slot())));
}

void MoELayerImpl::pretty_print(std::ostream& stream) const {
  stream << "moelab::MoELayer(dim=" << options.model_dim() << ", experts=" << options.num_experts()
         << ", k=" << options.k() << ", expert_hidden=" << options.expert_hidden() << ", router=" << options.router()
         << ", bank=" << options.bank() << ", capacity_factor=" << options.capacity_factor() << ")";
}

}  // namespace moelab
