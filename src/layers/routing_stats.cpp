#include "moelab/layers/routing_stats.h"

#include <algorithm>
#include <cmath>

namespace moelab {

RoutingStats RoutingStats::from(const Routing& routing, const DispatchPlan& plan) {
  torch::NoGradGuard no_grad;
  RoutingStats stats;
  stats.assigned = plan.assigned_per_expert.detach().to(torch::kFloat64);
  stats.importance = expert_importance(routing).detach().to(torch::kFloat64);
  stats.num_assignments = plan.num_assignments;
  stats.num_dropped = plan.num_dropped;
  stats.num_tokens = plan.num_tokens;
  if (routing.logits.defined()) {
    const auto logits = routing.logits.detach().to(torch::kDouble);
    const auto log_probs = torch::log_softmax(logits, 1);
    stats.logit_sums = torch::stack({-(log_probs.exp() * log_probs).sum(), torch::logsumexp(logits, 1).pow(2).sum()});
  }
  return stats;
}

void RoutingStats::set_input(const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  // One pass over x, accumulated in at least float32 (a bf16 input too), and no [N, D] temporary:
  // this runs in every forward of the layer.
  const auto wide = x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat32;
  const auto norm = at::linalg_vector_norm(x.detach(), 2, c10::nullopt, /*keepdim=*/false, wide);
  input_square_sum = norm.to(torch::kFloat64).pow(2) / static_cast<double>(x.size(1));
}

RoutingStats RoutingStats::from_soft(const SoftSlotWeights& weights, const torch::Tensor& real, int64_t tokens) {
  torch::NoGradGuard no_grad;
  const int64_t batch = weights.combine.size(0), slots = weights.combine.size(2);
  const auto mask = real.unsqueeze(2).to(torch::kDouble);  // [B, T, 1]
  const auto combine = weights.combine.detach().to(torch::kDouble);
  RoutingStats stats;
  stats.num_tokens = tokens;
  stats.num_assignments = batch * slots;
  stats.num_dropped = 0;
  // Per-expert figures need E: the slots of one expert are contiguous, p = S / E of them.
  const int64_t per_expert = weights.slots_per_expert;
  const int64_t num_experts = slots / per_expert;
  stats.assigned = torch::full({num_experts}, static_cast<double>(batch * per_expert), combine.options());
  const auto per_token = (combine * mask).view({batch, -1, num_experts, per_expert}).sum(3);  // [B, T, E]
  stats.importance = per_token.sum(at::IntArrayRef{0, 1});
  const auto log_q = per_token.clamp_min(1e-300).log();
  const auto logits = weights.logits.detach().to(torch::kDouble);
  const auto real_rows = real.to(torch::kDouble);
  stats.logit_sums = torch::stack({-((per_token * log_q).sum(2) * real_rows).sum(),
                                   (torch::logsumexp(logits, 2).pow(2) * real_rows).sum()});
  return stats;
}

RoutingStats merged(const RoutingStats& a, const RoutingStats& b) {
  if (!a.assigned.defined()) return b;
  if (!b.assigned.defined()) return a;
  // A sum over only one side's tokens would be divided by both sides' token count later: keep a
  // sum only when both sides have it.
  auto sum_of_both = [](const torch::Tensor& x, const torch::Tensor& y) {
    return x.defined() && y.defined() ? x + y.to(x.device()) : torch::Tensor();
  };
  RoutingStats out = a;
  out.assigned = sum_of_both(a.assigned, b.assigned);
  out.importance = sum_of_both(a.importance, b.importance);
  out.logit_sums = sum_of_both(a.logit_sums, b.logit_sums);
  out.input_square_sum = sum_of_both(a.input_square_sum, b.input_square_sum);
  out.num_assignments += b.num_assignments;
  out.num_dropped += b.num_dropped;
  out.num_tokens += b.num_tokens;
  return out;
}

double RoutingStats::entropy_sum() const { return has_logits() ? logit_sums[0].item<double>() : 0.0; }
double RoutingStats::z_sum() const { return has_logits() ? logit_sums[1].item<double>() : 0.0; }

void RoutingStatsAccumulator::add(const RoutingStats& stats) {
  if (empty()) {
    assigned_ = stats.assigned.clone();
    importance_ = stats.importance.clone();
  } else {
    assigned_ += stats.assigned.to(assigned_.device());
    importance_ += stats.importance.to(importance_.device());
  }
  if (stats.has_logits()) {
    if (logit_sums_.defined())
      logit_sums_ += stats.logit_sums.to(logit_sums_.device());
    else
      logit_sums_ = stats.logit_sums.clone();
  }
  if (stats.input_square_sum.defined())
    input_square_sum_ = input_square_sum_.defined() ? input_square_sum_ + stats.input_square_sum.to(input_square_sum_.device())
                                                    : stats.input_square_sum.clone();
  {
    // On the device, like the sums above: no wait here for a step that is not logged.
    const auto mean = stats.assigned.mean();
    const auto maxvio = torch::where(mean > 0, stats.assigned.max() / mean - 1, torch::zeros_like(mean));
    maxvio_batch_sum_ = maxvio_batch_sum_.defined() ? maxvio_batch_sum_ + maxvio.to(maxvio_batch_sum_.device()) : maxvio;
    ++batches_;
  }
  num_assignments_ += stats.num_assignments;
  num_dropped_ += stats.num_dropped;
  num_tokens_ += stats.num_tokens;
  has_logits_ = has_logits_ || stats.has_logits();
}

double coefficient_of_variation(const torch::Tensor& values) {
  if (!values.defined() || values.numel() < 2) return 0.0;
  const double mean = values.mean().item<double>();
  if (mean == 0.0) return 0.0;
  return values.std(/*unbiased=*/false).item<double>() / mean;
}

namespace {
std::vector<double> to_vector(const torch::Tensor& t) {
  if (!t.defined()) return {};
  const auto host = t.to(torch::kCPU, torch::kFloat64).contiguous();
  return std::vector<double>(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
}
}  // namespace

std::vector<double> RoutingStatsAccumulator::expert_load() const {
  auto counts = to_vector(assigned_);
  double total = 0;
  for (double c : counts) total += c;
  if (total > 0)
    for (double& c : counts) c /= total;
  return counts;
}

std::vector<double> RoutingStatsAccumulator::assigned_counts() const { return to_vector(assigned_); }
std::vector<double> RoutingStatsAccumulator::importance_sums() const { return to_vector(importance_); }

double RoutingStatsAccumulator::load_cv() const { return coefficient_of_variation(assigned_); }
double RoutingStatsAccumulator::importance_cv() const { return coefficient_of_variation(importance_); }

double RoutingStatsAccumulator::max_mean_load() const {
  if (empty()) return 0.0;
  const double mean = assigned_.mean().item<double>();
  return mean > 0 ? assigned_.max().item<double>() / mean : 0.0;
}

double RoutingStatsAccumulator::maxvio_batch() const {
  return batches_ > 0 ? maxvio_batch_sum_.item<double>() / static_cast<double>(batches_) : 0.0;
}

double RoutingStatsAccumulator::experts_per_token() const {
  return num_tokens_ > 0 ? static_cast<double>(num_assignments_) / static_cast<double>(num_tokens_) : 0.0;
}

namespace {
// Share of the loads held by the `count` largest (or smallest) experts.
double extreme_share(std::vector<double> load, bool largest) {
  if (load.empty()) return 0.0;
  const size_t count = std::max<size_t>(1, static_cast<size_t>(std::lround(0.2 * static_cast<double>(load.size()))));
  std::sort(load.begin(), load.end());
  if (largest) std::reverse(load.begin(), load.end());
  double share = 0;
  for (size_t i = 0; i < count; ++i) share += load[i];
  return share;
}
}  // namespace

double RoutingStatsAccumulator::top_load_share() const { return extreme_share(expert_load(), /*largest=*/true); }
double RoutingStatsAccumulator::bottom_load_share() const { return extreme_share(expert_load(), /*largest=*/false); }

double RoutingStatsAccumulator::dropped_frac() const {
  return num_assignments_ > 0 ? static_cast<double>(num_dropped_) / static_cast<double>(num_assignments_) : 0.0;
}

int64_t RoutingStatsAccumulator::unused_experts() const {
  return empty() ? 0 : (assigned_ == 0).sum().item<int64_t>();
}

double RoutingStatsAccumulator::routing_entropy() const {
  return num_tokens_ > 0 && logit_sums_.defined() ? logit_sums_[0].item<double>() / static_cast<double>(num_tokens_)
                                                  : 0.0;
}

double RoutingStatsAccumulator::mean_router_z() const {
  return num_tokens_ > 0 && logit_sums_.defined() ? logit_sums_[1].item<double>() / static_cast<double>(num_tokens_)
                                                  : 0.0;
}

double RoutingStatsAccumulator::input_rms() const {
  return num_tokens_ > 0 && input_square_sum_.defined()
             ? std::sqrt(input_square_sum_.item<double>() / static_cast<double>(num_tokens_))
             : 0.0;
}

nlohmann::json RoutingStatsAccumulator::to_json() const {
  nlohmann::json out = {{"expert_load", expert_load()},       {"load_cv", load_cv()},
                        {"importance_cv", importance_cv()},   {"max_mean_load", max_mean_load()},
                        {"dropped_frac", dropped_frac()},     {"unused_experts", unused_experts()},
                        {"assignments", num_assignments_},   {"maxvio", maxvio()},
                        {"maxvio_batch", maxvio_batch()},     {"experts_per_token", experts_per_token()},
                        {"top20_load", top_load_share()},     {"bottom20_load", bottom_load_share()}};
  if (input_square_sum_.defined()) out["input_rms"] = input_rms();
  if (has_logits_) {
    out["routing_entropy"] = routing_entropy();
    out["router_z"] = mean_router_z();
  }
  return out;
}

void add_routing(std::vector<RoutingStatsAccumulator>& layers, const std::vector<RoutingStats>& batch) {
  if (layers.size() < batch.size()) layers.resize(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) layers[i].add(batch[i]);
}

}  // namespace moelab
