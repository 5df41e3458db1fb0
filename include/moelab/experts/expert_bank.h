// The interface every expert bank implements: E experts whose weights are stacked, run over rows
// already grouped by expert (see dispatch/dispatch_plan.h).
//
// Shape legend: M rows, D model width, E experts.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include "moelab/dispatch/dispatch_plan.h"

namespace moelab {

class ExpertBank : public torch::nn::Module {
 public:
  // rows: [M, D] in plan order. Returns [M, D], row i processed by expert plan.expert_of_row[i].
  virtual torch::Tensor forward(const torch::Tensor& rows, const DispatchPlan& plan) = 0;
  // The slow twin: every expert applied to every token, [N, E, D]. Test oracle only.
  virtual torch::Tensor all_experts_reference(const torch::Tensor& x) = 0;
  virtual int64_t num_experts() const = 0;
  // Parameters one token-slot touches (one expert's), for "active parameters per token".
  virtual int64_t params_per_expert() const = 0;
  // FLOPs (2 x multiply-adds) one token-slot costs.
  virtual int64_t flops_per_slot() const = 0;
};

}  // namespace moelab
