#include "moelab/balance/balance_losses.h"

#include "moelab/balance/importance_loss.h"
#include "moelab/util/error.h"

namespace moelab {

torch::Tensor slot_counts(const torch::Tensor& expert_index, int64_t num_experts) {
  return count_slots_per_expert(expert_index, num_experts).to(torch::kFloat);
}

namespace {
// E * sum_e f_e P_e: f_e the share of the token-slots (no gradient), P_e the mean probability [E].
torch::Tensor switch_loss_of(const torch::Tensor& assigned, const torch::Tensor& mean_probs) {
  const auto counts = assigned.detach().to(mean_probs.scalar_type());
  const auto fraction = counts / counts.sum().clamp_min(1.0);
  return static_cast<double>(mean_probs.size(0)) * (fraction * mean_probs).sum();
}
}  // namespace

torch::Tensor switch_loss(const torch::Tensor& probs, const torch::Tensor& assigned) {
  TORCH_CHECK(probs.dim() == 2 && assigned.dim() == 1 && assigned.size(0) == probs.size(1),
              "switch_loss expects probs [N, E] and assigned [E]");
  if (probs.size(0) == 0) return torch::zeros({}, probs.options());
  return switch_loss_of(assigned, probs.mean(0));
}

torch::Tensor z_loss(const torch::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2, "z_loss expects logits [N, E], got ", logits.sizes());
  if (logits.size(0) == 0) return torch::zeros({}, logits.options());
  return torch::logsumexp(logits, /*dim=*/1).pow(2).mean();
}

BalanceSums balance_sums(const Routing& routing) {
  BalanceSums sums;
  sums.importance = expert_importance(routing);
  sums.smooth_load = routing.smooth_load;
  sums.counts = slot_counts(routing.expert_index, routing.num_experts);
  if (routing.logits.defined())
    sums.prob_sums = (routing.probs.defined() ? routing.probs : torch::softmax(routing.logits, 1)).sum(0);
  sums.tokens = torch::full({}, static_cast<double>(routing.expert_index.size(0)),
                            routing.gate_weight.options().dtype(torch::kFloat64));
  return sums;
}

BalanceSums pooled_sums(const BalanceSums& local, const BalanceSums& pooled, double gradient_scale) {
  auto pool = [&](const torch::Tensor& mine, const torch::Tensor& all) -> torch::Tensor {
    if (!mine.defined()) return mine;
    const auto value = all.detach().to(mine.options());
    if (!mine.requires_grad()) return value;
    return value + gradient_scale * (mine - mine.detach());
  };
  BalanceSums out;
  out.importance = pool(local.importance, pooled.importance);
  out.smooth_load = pool(local.smooth_load, pooled.smooth_load);
  out.counts = pool(local.counts, pooled.counts);
  out.prob_sums = pool(local.prob_sums, pooled.prob_sums);
  out.tokens = pool(local.tokens, pooled.tokens);
  return out;
}

namespace {
std::vector<torch::Tensor> parts_of(const BalanceSums& sums) {
  std::vector<torch::Tensor> parts;
  for (const auto* t : {&sums.importance, &sums.smooth_load, &sums.counts, &sums.prob_sums, &sums.tokens})
    if (t->defined()) parts.push_back(t->detach().to(torch::kFloat64).reshape({-1}));
  return parts;
}
}  // namespace

torch::Tensor pack_balance_sums(const BalanceSums& sums) { return torch::cat(parts_of(sums)); }

BalanceSums unpack_balance_sums(const torch::Tensor& packed, const BalanceSums& like) {
  BalanceSums out;
  int64_t offset = 0;
  auto take = [&](const torch::Tensor& shape_of) -> torch::Tensor {
    if (!shape_of.defined()) return {};
    const auto piece = packed.narrow(0, offset, shape_of.numel()).view(shape_of.sizes());
    offset += shape_of.numel();
    return piece;
  };
  out.importance = take(like.importance);
  out.smooth_load = take(like.smooth_load);
  out.counts = take(like.counts);
  out.prob_sums = take(like.prob_sums);
  out.tokens = take(like.tokens);
  TORCH_CHECK(offset == packed.numel(), "unpack_balance_sums: ", packed.numel(), " values for ", offset);
  return out;
}

BalanceResult balance_losses(const Routing& routing, const BalanceWeights& weights) {
  return balance_losses(routing, weights, balance_sums(routing));
}

BalanceResult balance_losses(const Routing& routing, const BalanceWeights& weights, const BalanceSums& sums) {
  BalanceResult result;
  auto aux = routing.router_loss.defined() ? routing.router_loss : torch::zeros({}, routing.gate_weight.options());
  auto add = [&](const char* name, const torch::Tensor& value, double weight) {
    result.terms[name] = value.detach();
    if (weight > 0) aux = aux + weight * value;
  };

  add("importance", cv_squared(sums.importance), weights.importance);

  if (sums.smooth_load.defined()) {
    add("load", cv_squared(sums.smooth_load), weights.load);
  } else {
    // In evaluation (no noise) or with k = E the count still measures balance, without gradient.
    // MoELayer refuses a load weight for routers that never have a smooth estimate.
    result.terms["load"] = cv_squared(sums.counts).detach();
  }

  if (routing.logits.defined()) {
    const auto mean_probs = sums.prob_sums / sums.tokens.detach().clamp_min(1.0).to(sums.prob_sums.scalar_type());
    add("switch", switch_loss_of(sums.counts, mean_probs), weights.switch_loss);
    add("z", z_loss(routing.logits), weights.z);
  } else if (weights.switch_loss > 0 || weights.z > 0) {
    fail("moe.balance.switch and moe.balance.z need router logits; this router has none");
  }
  for (const auto& [name, value] : routing.loss_terms) result.terms[name] = value;
  result.aux_loss = aux;
  return result;
}

}  // namespace moelab
