#include "moelab/bench/module_loop_moe.h"

#include "moelab/balance/balance_losses.h"

namespace moelab {

ModuleLoopMoEImpl::ModuleLoopMoEImpl(const MoELayerOptions& options_) : options(options_) {
  router = register_module("router", make_router(options));
  up = register_module("up", torch::nn::ModuleList());
  down = register_module("down", torch::nn::ModuleList());
  for (int64_t e = 0; e < options.num_experts(); ++e) {
    up->push_back(torch::nn::Linear(options.model_dim(), options.expert_hidden()));
    down->push_back(torch::nn::Linear(options.expert_hidden(), options.model_dim()));
  }
}

MoEOutput ModuleLoopMoEImpl::forward(const torch::Tensor& x) {
  const Routing routing = router->route(x);
  auto output = torch::zeros_like(x);
  for (int64_t e = 0; e < options.num_experts(); ++e) {
    const auto where = (routing.expert_index == e).nonzero();  // [n_e, 2]: token, slot
    if (where.size(0) == 0) continue;
    const auto tokens = where.select(1, 0);
    const auto gate = routing.gate_weight.index({tokens, where.select(1, 1)}).unsqueeze(1);
    auto hidden = torch::relu(up[e]->as<torch::nn::Linear>()->forward(x.index_select(0, tokens)));
    output = output.index_add(0, tokens, down[e]->as<torch::nn::Linear>()->forward(hidden) * gate);
  }
  MoEOutput out;
  out.output = output;
  out.aux_loss = balance_losses(routing, options.balance()).aux_loss;
  return out;
}

}  // namespace moelab
