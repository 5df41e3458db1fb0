// Expert-usage statistics of one MoE layer, gathered over many batches and summarised as the
// figures summary.json reports (README, "Run directory"): expert_load, load_cv, importance_cv,
// max_mean_load, dropped_frac.
#pragma once
#include <torch/types.h>

#include <nlohmann/json.hpp>

#include "moelab/dispatch/dispatch_plan.h"
#include "moelab/routing/routing.h"
#include "moelab/routing/soft_slots.h"

namespace moelab {

// One batch's figures, detached, left on the layer's device: nothing here waits for the device, so
// a training step copies its statistics to the host only when they are logged.
struct RoutingStats {
  torch::Tensor assigned;    // [E] float64, token-slots routed to each expert (before capacity)
  torch::Tensor importance;  // [E] float64, sum of gate values per expert
  // [2] float64: the sums over tokens of the entropy (nats) of the router's distribution and of
  // logsumexp(logits)^2; undefined when the router has no logits.
  torch::Tensor logit_sums;
  // [] float64: the sum over tokens of the mean square of the layer's input (before any router
  // normalisation), so the router's input scale can be read beside its entropy; undefined until set.
  torch::Tensor input_square_sum;
  int64_t num_assignments = 0;
  int64_t num_dropped = 0;
  int64_t num_tokens = 0;

  bool has_logits() const { return logit_sums.defined(); }
  double entropy_sum() const;  // copies from the device
  double z_sum() const;

  static RoutingStats from(const Routing& routing, const DispatchPlan& plan);
  // x [N, D]: the layer's input, one row per routed token.
  void set_input(const torch::Tensor& x);
  // Soft MoE: every expert takes p slots per sequence; a token's "gate" on expert e is its combine
  // weight summed over e's slots. real [B, T] bool; tokens: the real tokens.
  static RoutingStats from_soft(const SoftSlotWeights& weights, const torch::Tensor& real, int64_t tokens);
};

// Two batches' statistics of one layer summed (the micro-batches of one training step).
RoutingStats merged(const RoutingStats& a, const RoutingStats& b);

class RoutingStatsAccumulator {
 public:
  void add(const RoutingStats& stats);
  bool empty() const { return !assigned_.defined(); }
  void clear() { *this = RoutingStatsAccumulator(); }

  std::vector<double> expert_load() const;  // fraction of token-slots per expert, sums to 1
  std::vector<double> assigned_counts() const;  // token-slots per expert
  std::vector<double> importance_sums() const;  // gate values summed per expert
  double load_cv() const;                   // std / mean of per-expert assignments
  double importance_cv() const;             // std / mean of per-expert gate sums
  double max_mean_load() const;             // max / mean of per-expert assignments
  // MaxVio (Wang et al. 2024): max over experts of load / mean load - 1. maxvio() reads the loads
  // summed over every batch added (the "global" figure); maxvio_batch() is the mean over the
  // batches of each batch's own MaxVio.
  double maxvio() const { return empty() ? 0.0 : max_mean_load() - 1.0; }
  double maxvio_batch() const;
  // Token-slots that reached a real expert per token (the routers with a varying count, relu and
  // null experts, measure their compute with it).
  double experts_per_token() const;
  // Share of all token-slots taken by the most / least loaded 20 % of the experts (at least one).
  double top_load_share() const;
  double bottom_load_share() const;
  double dropped_frac() const;
  int64_t unused_experts() const;  // experts that received no token-slot
  double routing_entropy() const;  // mean over tokens, nats; 0 without router logits
  double mean_router_z() const;    // mean over tokens of logsumexp(logits)^2; 0 without logits
  double input_rms() const;        // root mean square of the layer's input; 0 when never set
  bool has_router_logits() const { return has_logits_; }
  // {"expert_load": [...], "load_cv", "importance_cv", "max_mean_load", "dropped_frac",
  //  "unused_experts", "routing_entropy", "router_z", "assignments", "maxvio", "maxvio_batch",
  //  "experts_per_token", "top20_load", "bottom20_load", "input_rms"}
  nlohmann::json to_json() const;

 private:
  // Sums on the device of the first batch added; host copies are made when a figure is read.
  torch::Tensor assigned_;
  torch::Tensor importance_;
  torch::Tensor logit_sums_;
  torch::Tensor input_square_sum_;
  torch::Tensor maxvio_batch_sum_;  // [] float64, sum over batches of each one's MaxVio
  int64_t batches_ = 0;
  int64_t num_assignments_ = 0;
  int64_t num_dropped_ = 0;
  int64_t num_tokens_ = 0;
  bool has_logits_ = false;
};

// Coefficient of variation std/mean (population std); 0 for fewer than two values or zero mean.
double coefficient_of_variation(const torch::Tensor& values);

// Adds one batch's statistics of every MoE layer to per-layer accumulators (grown to fit).
void add_routing(std::vector<RoutingStatsAccumulator>& layers, const std::vector<RoutingStats>& batch);

}  // namespace moelab
