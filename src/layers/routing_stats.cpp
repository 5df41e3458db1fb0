#include "moelab/layers/routing_stats.h"

namespace moelab {

RoutingStats RoutingStats::from(const Routing& routing, const DispatchPlan& plan) {
  RoutingStats stats;
  stats.assigned = plan.assigned_per_expert.detach().to(torch::kCPU, torch::kFloat64);
  stats.importance = routing.gates.detach().sum(0).to(torch::kCPU, torch::kFloat64);
  stats.num_assignments = plan.num_assignments;
  stats.num_dropped = plan.num_dropped;
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

nlohmann::json RoutingStatsAccumulator::to_json() const {
  return {{"expert_load", expert_load()},     {"load_cv", load_cv()},
          {"importance_cv", importance_cv()}, {"max_mean_load", max_mean_load()},
          {"dropped_frac", dropped_frac()},   {"assignments", num_assignments_}};
}

}  // namespace moelab
