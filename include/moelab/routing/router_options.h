// The options every router is built from (most routers read only a few of them), and the factory
// that maps a router name to its class.
#pragma once
#include <torch/arg.h>

#include <memory>
#include <string>
#include <vector>

#include "moelab/balance/balance_losses.h"
#include "moelab/routing/routing.h"

namespace moelab {

struct RouterOptions {
  RouterOptions(int64_t model_dim, int64_t num_experts, int64_t k)
      : model_dim_(model_dim), num_experts_(num_experts), k_(k) {}
  /// Width D of the token features.
  TORCH_ARG(int64_t, model_dim);
  /// Number of experts E.
  TORCH_ARG(int64_t, num_experts);
  /// Experts per token K (per group for the hierarchical router).
  TORCH_ARG(int64_t, k);
  /// Noisy gates: add trainable Gaussian noise to the logits while training.
  TORCH_ARG(bool, noisy) = true;
  /// Noisy gates: floor added to softplus(x W_noise) so the noise never vanishes entirely.
  TORCH_ARG(double, noise_epsilon) = 1e-2;
  /// Expert choice: tokens per expert C = ceil(capacity_factor * N * k / E).
  TORCH_ARG(double, capacity_factor) = 1.0;
  /// Expert choice in evaluation; < 0 means the same as capacity_factor.
  TORCH_ARG(double, eval_capacity_factor) = -1.0;
  /// The model is causal (a language model): in evaluation, no token's routing may depend on later
  /// tokens. Expert choice then routes each token to its own top experts (see ExpertChoiceRouter).
  TORCH_ARG(bool, causal) = false;
  /// Hierarchical, aux_free, group_limited: number of groups G (E must be a multiple of G).
  TORCH_ARG(int64_t, groups) = 1;
  /// Hierarchical: groups chosen per token by the primary gate; aux_free and group_limited: groups a
  /// token's experts may come from.
  TORCH_ARG(int64_t, group_k) = 1;
  /// Aux-loss-free: "sigmoid" or "softmax" of the logits as the token-expert affinities.
  TORCH_ARG(std::string, affinity) = "sigmoid";
  /// Aux-loss-free: the renormalised gate weights are multiplied by this.
  TORCH_ARG(double, route_scale) = 1.0;
  /// Aux-loss-free: how far each expert's bias moves per optimizer step (towards the mean load).
  TORCH_ARG(double, bias_update_rate) = 1e-3;
  /// ReLU routing: the L1 coefficient lambda at the start.
  TORCH_ARG(double, l1_init) = 1e-8;
  /// ReLU routing: lambda is multiplied or divided by this after every step (alpha > 1).
  TORCH_ARG(double, l1_rate) = 1.2;
  /// Hierarchical: the balancing losses are applied to the primary gate too, with these weights.
  TORCH_ARG(BalanceWeights, balance) = {};
};

// The checks every router makes: E >= 1, k >= 1, D >= 1.
void check_router_sizes(const RouterOptions& options);
// k <= E, for routers that pick k distinct experts per token.
void check_k_fits(const RouterOptions& options);

// Known router names, in the order the README lists them.
const std::vector<std::string>& router_names();

// Throws moelab::Error for an unknown name (listing the known ones) or invalid sizes.
std::shared_ptr<Router> make_router(const std::string& name, const RouterOptions& options);

}  // namespace moelab
