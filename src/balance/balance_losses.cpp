#include "moelab/balance/balance_losses.h"

#include "moelab/balance/importance_loss.h"
#include "moelab/util/error.h"

namespace moelab {

torch::Tensor slot_counts(const torch::Tensor& expert_index, int64_t num_experts) {
  return count_slots_per_expert(expert_index, num_experts).to(torch::kFloat);
}

torch::Tensor switch_loss(const torch::Tensor& probs, const torch::Tensor& assigned) {
  TORCH_CHECK(probs.dim() == 2 && assigned.dim() == 1 && assigned.size(0) == probs.size(1),
              "switch_loss expects probs [N, E] and assigned [E]");
  if (probs.size(0) == 0) return torch::zeros({}, probs.options());
  const auto counts = assigned.detach().to(probs.scalar_type());
  const auto fraction = counts / counts.sum().clamp_min(1.0);
  return static_cast<double>(probs.size(1)) * (fraction * probs.mean(0)).sum();
}

torch::Tensor z_loss(const torch::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2, "z_loss expects logits [N, E], got ", logits.sizes());
  if (logits.size(0) == 0) return torch::zeros({}, logits.options());
  return torch::logsumexp(logits, /*dim=*/1).pow(2).mean();
}

BalanceResult balance_losses(const Routing& routing, const BalanceWeights& weights) {
  const auto counts = slot_counts(routing.expert_index, routing.num_experts);
  BalanceResult result;
  auto aux = routing.router_loss.defined() ? routing.router_loss : torch::zeros({}, routing.gate_weight.options());
  auto add = [&](const char* name, const torch::Tensor& value, double weight) {
    result.terms[name] = value.detach();
    if (weight > 0) aux = aux + weight * value;
  };

  add("importance", cv_squared(expert_importance(routing)), weights.importance);

  if (routing.smooth_load.defined()) {
    add("load", cv_squared(routing.smooth_load), weights.load);
  } else {
    // In evaluation (no noise) or with k = E the count still measures balance, without gradient.
    // MoELayer refuses a load weight for routers that never have a smooth estimate.
    result.terms["load"] = cv_squared(counts).detach();
  }

  if (routing.logits.defined()) {
    const auto probs = routing.probs.defined() ? routing.probs : torch::softmax(routing.logits, 1);
    add("switch", switch_loss(probs, counts), weights.switch_loss);
    add("z", z_loss(routing.logits), weights.z);
  } else if (weights.switch_loss > 0 || weights.z > 0) {
    fail("moe.balance.switch and moe.balance.z need router logits; this router has none");
  }
  for (const auto& [name, value] : routing.loss_terms) result.terms[name] = value;
  result.aux_loss = aux;
  return result;
}

}  // namespace moelab
