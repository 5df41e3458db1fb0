#include "moelab/routing/noisy_topk_router.h"

#include "moelab/balance/importance_loss.h"
#include "moelab/balance/load_loss.h"
#include "moelab/util/error.h"

namespace moelab {

NoisyTopKRouter::NoisyTopKRouter(const NoisyTopKRouterOptions& options_) : options(options_) {
  if (options.num_experts() < 1) fail("moe.experts must be >= 1 for a router, got {}", options.num_experts());
  if (options.k() < 1) fail("moe.k must be >= 1, got {}", options.k());
  if (options.k() > options.num_experts())
    fail("moe.k = {} exceeds moe.experts = {}", options.k(), options.num_experts());
  if (options.model_dim() < 1) fail("router width must be >= 1, got {}", options.model_dim());
  reset();
}

void NoisyTopKRouter::reset() {
  w_gate = register_parameter("w_gate", torch::zeros({options.model_dim(), options.num_experts()}));
  w_noise = register_parameter("w_noise", torch::zeros({options.model_dim(), options.num_experts()}));
}

Routing NoisyTopKRouter::route(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options.model_dim(), "router expects [N, ", options.model_dim(),
              "] input, got ", x.sizes());
  const int64_t k = options.k();
  const int64_t num_experts = options.num_experts();
  const bool add_noise = is_training() && options.noisy();

  const auto clean_logits = x.mm(w_gate);  // [N, E]
  torch::Tensor logits = clean_logits;
  torch::Tensor noise_std;
  if (add_noise) {
    noise_std = torch::softplus(x.mm(w_noise)) + options.noise_epsilon();  // [N, E]
    logits = clean_logits + torch::randn_like(clean_logits) * noise_std;
  }

  // The (k+1)-th value is needed by the smooth load estimator; topk returns descending order.
  const int64_t num_top = std::min(k + 1, num_experts);
  auto [top_logits, top_index] = logits.topk(num_top, /*dim=*/1);  // [N, K+1]
  const auto gate_weight = torch::softmax(top_logits.narrow(1, 0, k), /*dim=*/1);  // [N, K]
  const auto expert_index = top_index.narrow(1, 0, k).contiguous();                 // [N, K]
  const auto gates = torch::zeros_like(logits).scatter(1, expert_index, gate_weight);  // [N, E]

  Routing routing;
  routing.expert_index = expert_index;
  routing.gate_weight = gate_weight;
  routing.gates = gates;

  const auto importance = importance_loss(gates);
  // The smooth estimator needs noise and a (k+1)-th expert; otherwise the load is a count, which
  // still measures balance but carries no gradient.
  const auto load = (add_noise && k < num_experts)
                        ? cv_squared(smooth_load(clean_logits, logits, noise_std, top_logits, k))
                        : cv_squared(hard_load(gates));
  routing.aux_loss = options.importance_weight() * importance + options.load_weight() * load;
  routing.loss_terms["importance"] = importance.detach();
  routing.loss_terms["load"] = load.detach();
  return routing;
}

void NoisyTopKRouter::pretty_print(std::ostream& stream) const {
  stream << "moelab::NoisyTopKRouter(dim=" << options.model_dim() << ", experts=" << options.num_experts()
         << ", k=" << options.k() << ", noisy=" << options.noisy() << ")";
}

}  // namespace moelab
