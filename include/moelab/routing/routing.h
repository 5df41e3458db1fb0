// What a router hands to dispatch: for each token, K (expert, weight) slots, plus the auxiliary
// loss and the statistics the layer reports. A plain struct so routers, dispatch and expert banks
// can be swapped independently (../shared/DESIGN.md).
//
// Shape legend: N tokens, D model width, E experts, K slots per token.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <map>
#include <string>

namespace moelab {

struct Routing {
  torch::Tensor expert_index;  // [N, K] int64, the chosen experts, in descending gate order
  torch::Tensor gate_weight;   // [N, K] float, differentiable combine weights
  torch::Tensor gates;         // [N, E] float, the dense gate matrix G(x) (zeros off the top-k)
  torch::Tensor aux_loss;      // scalar, already weighted; add it to the task loss
  // Unweighted named terms ("importance", "load", ...) for logging; detached scalars.
  std::map<std::string, torch::Tensor> loss_terms;
};

// Every router is a module that maps token features to a Routing.
class Router : public torch::nn::Module {
 public:
  virtual Routing route(const torch::Tensor& x) = 0;  // x: [N, D]
  virtual int64_t num_experts() const = 0;
  virtual int64_t num_slots() const = 0;  // K
  // Multiply-adds x2 per token spent computing gates at inference.
  virtual int64_t flops_per_token() const = 0;
};

}  // namespace moelab
