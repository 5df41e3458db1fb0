#include "moelab/layers/moe_layer.h"

#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/routing/noisy_topk_router.h"
#include "moelab/util/error.h"

namespace moelab {

std::shared_ptr<Router> make_router(const MoELayerOptions& options) {
  if (options.router() == "noisy_topk") {
    return std::make_shared<NoisyTopKRouter>(NoisyTopKRouterOptions(options.model_dim(), options.num_experts(),
                                                                    options.k())
                                                 .noisy(options.noisy())
                                                 .noise_epsilon(options.noise_epsilon())
                                                 .importance_weight(options.importance_weight())
                                                 .load_weight(options.load_weight()));
  }
  fail("unknown moe.router '{}' (known: noisy_topk)", options.router());
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
}

MoEOutput MoELayerImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options.model_dim(), "MoE layer expects [N, ", options.model_dim(),
              "] input, got ", x.sizes());
  const Routing routing = router->route(x);
  const DispatchPlan plan = make_dispatch_plan(routing, options.num_experts(), options.capacity_factor());
  const auto rows = experts->forward(dispatch_rows(x, plan), plan);  // [M, D]
  MoEOutput out;
  out.output = combine_rows(rows, plan);
  out.aux_loss = routing.aux_loss;
  out.loss_terms = routing.loss_terms;
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
  return router_params + options.k() * experts->params_per_expert();
}

int64_t MoELayerImpl::flops_per_token() const {
  return router->flops_per_token() + options.k() * experts->flops_per_slot();
}

void MoELayerImpl::pretty_print(std::ostream& stream) const {
  stream << "moelab::MoELayer(dim=" << options.model_dim() << ", experts=" << options.num_experts()
         << ", k=" << options.k() << ", expert_hidden=" << options.expert_hidden() << ", router=" << options.router()
         << ", bank=" << options.bank() << ", capacity_factor=" << options.capacity_factor() << ")";
}

}  // namespace moelab
