#include "moelab/layers/routing_stats.h"

namespace moelab {

RoutingStats RoutingStats::from(const Routing& routing, const DispatchPlan& plan) {
  RoutingStats stats;
  stats.assigned = plan.assigned_per_expert.detach().to(torch::kCPU, torch::kFloat64);
  stats.importance = expert_importance(routing).detach().to(torch::kCPU, torch::kFloat64);
  stats.num_assignments = plan.num_assignments;
  stats.num_dropped = plan.num_dropped;
  stats.num_tokens = plan.num_tokens;
  if (routing.logits.defined()) {
    torch::NoGradGuard no_grad;
    const auto logits = routing.logits.detach().to(torch::kDouble);
    const auto log_probs = torch::log_softmax(logits, 1);
    stats.entropy_sum = -(log_probs.exp() * log_probs).sum().item<double>();
    stats.z_sum = torch::logsumexp(logits, 1).pow(2).sum().item<double>();
    stats.has_logits = true;
  }
  return stats;
}

void RoutingStatsAccumulator::add(const RoutingStats& stats) {
  if (empty()) {
    assigned_ = stats.assigned.clone();
    importance_ = stats.importance.clone();
  } else {
    assigned_ += stats.assigned;
    importance_ += stats.importance;
  }
  num_assignments_ += stats.num_assignments;
  num_dropped_ += stats.num_dropped;
  num_tokens_ += stats.num_tokens;
  entropy_sum_ += stats.entropy_sum;
  z_sum_ += stats.z_sum;
  has_logits_ = has_logits_ || stats.has_logits;
}

double coefficient_of_variation(const torch::Tensor& values) {
  if (!values.defined() || values.numel() < 2) return 0.0;
  const double mean = values.mean().item<double>();
  if (mean == 0.0) return 0.0;
  return values.std(/*unbiased=*/false).item<double>() / mean;
}

std::vector<double> RoutingStatsAccumulator::expert_load() const {
  if (empty()) return {};
  const auto total = assigned_.sum().item<double>();
  const auto fractions = total > 0 ? assigned_ / total : assigned_;
  return std::vector<double>(fractions.data_ptr<double>(), fractions.data_ptr<double>() + fractions.numel());
}

namespace {
std::vector<double> to_vector(const torch::Tensor& t) {
  if (!t.defined()) return {};
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}
}  // namespace

std::vector<double> RoutingStatsAccumulator::assigned_counts() const { return to_vector(assigned_); }
std::vector<double> RoutingStatsAccumulator::importance_sums() const { return to_vector(importance_); }

double RoutingStatsAccumulator::load_cv() const { return coefficient_of_variation(assigned_); }
double RoutingStatsAccumulator::importance_cv() const { return coefficient_of_variation(importance_); }

double RoutingStatsAccumulator::max_mean_load() const {
  if (empty()) return 0.0;
  const double mean = assigned_.mean().item<double>();
  return mean > 0 ? assigned_.max().item<double>() / mean : 0.0;
}

double RoutingStatsAccumulator::dropped_frac() const {
  return num_assignments_ > 0 ? static_cast<double>(num_dropped_) / static_cast<double>(num_assignments_) : 0.0;
}

int64_t RoutingStatsAccumulator::unused_experts() const {
  return empty() ? 0 : (assigned_ == 0).sum().item<int64_t>();
}

double RoutingStatsAccumulator::routing_entropy() const {
  return num_tokens_ > 0 ? entropy_sum_ / static_cast<double>(num_tokens_) : 0.0;
}

double RoutingStatsAccumulator::mean_router_z() const {
  return num_tokens_ > 0 ? z_sum_ / static_cast<double>(num_tokens_) : 0.0;
}

nlohmann::json RoutingStatsAccumulator::to_json() const {
  nlohmann::json out = {{"expert_load", expert_load()},       {"load_cv", load_cv()},
                        {"importance_cv", importance_cv()},   {"max_mean_load", max_mean_load()},
                        {"dropped_frac", dropped_frac()},     {"unused_experts", unused_experts()},
                        {"assignments", num_assignments_}};
  if (has_logits_) {
    out["routing_entropy"] = routing_entropy();
    out["router_z"] = mean_router_z();
  }
  return out;
}

}  // namespace moelab
