// The router interface: a module mapping token features to a Routing (types/routing.h).
//
// Shape legend: N tokens, D model width, E experts, K slots per token.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <map>
#include <string>

#include "moelab/types/routing.h"

namespace moelab {

// Every router is a module that maps token features (and, for hash routing, token ids) to a Routing.
class Router : public torch::nn::Module {
 public:
  // x: [N, D]; token_ids: [N] int64 or undefined. Routing math runs in float32 whatever x's dtype is
  // (it is promoted; double stays double for gradient checks).
  Routing route(const torch::Tensor& x, const torch::Tensor& token_ids = {});

  virtual int64_t num_experts() const = 0;
  virtual int64_t num_slots() const = 0;  // K: columns of expert_index
  // Experts a token is processed by on average (for active parameters and FLOPs). Equal to K for
  // token-choice routers; expert choice gives capacity_factor * k.
  virtual double experts_per_token() const { return static_cast<double>(num_slots()); }
  // FLOPs (2 x multiply-adds) per token spent computing gates at inference.
  virtual int64_t flops_per_token() const = 0;
  // True if the router has Gaussian gate noise, and so a smooth load estimate while training
  // (unless k = E, where every expert gets every token and the load loss is 0 anyway).
  virtual bool has_smooth_load() const { return false; }
  virtual bool needs_token_ids() const { return false; }
  // False for routers that compute no logits (hash): the switch and z losses do not apply.
  virtual bool has_logits() const { return true; }
  // True if the router itself fills every expert to its capacity (expert choice): dispatch then
  // has nothing to drop.
  virtual bool fills_capacity() const { return false; }
  // False for routers whose tokens take a varying number of experts (relu): capacity, defined in
  // slots per token, means nothing there, and the MoE layer refuses one.
  virtual bool takes_capacity() const { return true; }
  // Called once after every optimizer step with the token-slots each expert was chosen for over the
  // step's whole global batch ([E], every rank's tokens) and that batch's token count: routers that
  // balance by state instead of a loss (aux-loss-free biases, ReLU routing's L1 coefficient) update
  // it here. Identical input on every rank keeps their state equal.
  virtual void after_step(const torch::Tensor& chosen_per_expert, int64_t tokens) {
    (void)chosen_per_expert;
    (void)tokens;
  }

 protected:
  virtual Routing compute(const torch::Tensor& x, const torch::Tensor& token_ids) = 0;
};

}  // namespace moelab
