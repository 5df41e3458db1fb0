// The interface every expert bank implements: E experts whose weights are stacked, run over the
// token-slots a DispatchPlan groups by expert. A bank with a part shared by all experts computes
// that part once per token and only the expert-specific parts per expert group.
//
// Shape legend: N tokens, M rows (token-slots kept by the plan), D model width, E experts.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <vector>

#include "moelab/dispatch/dispatch_plan.h"

namespace moelab {

class ExpertBank : public torch::nn::Module {
 public:
  // x: [N, D] tokens. Returns [M, D] in plan order: row i is expert plan.expert_of_row[i] applied
  // to token plan.token_index[i].
  virtual torch::Tensor forward(const torch::Tensor& x, const DispatchPlan& plan) = 0;
  // The slow twin: every expert applied to every token from an explicit dense reconstruction of
  // its weights, [N, E, D]. Test oracle only.
  virtual torch::Tensor all_experts_reference(const torch::Tensor& x) = 0;
  virtual int64_t num_experts() const = 0;

  // Accounting, all computed from the module's tensors.
  int64_t params_total() const;
  // Tensors every expert uses (a shared base, projection or central core); none for independent
  // experts. Every other parameter is stacked per expert, [E, ...].
  virtual std::vector<torch::Tensor> shared_parameters() const { return {}; }
  std::vector<torch::Tensor> per_expert_parameters() const;
  // Whether `parameter` is one of the stacked per-expert tensors above.
  bool is_per_expert(const torch::Tensor& parameter) const;
  int64_t params_shared() const;
  // Parameters that belong to one expert only: (total - shared) / E.
  int64_t params_per_expert_unique() const;
  // Parameters one token touches when it visits `experts_per_token` experts on average.
  int64_t params_active_per_token(double experts_per_token) const;
  // FLOPs (2 x multiply-adds) spent once per token on shared parts, and per token-slot.
  virtual int64_t flops_shared_per_token() const { return 0; }
  virtual int64_t flops_per_slot() const = 0;
  int64_t flops_per_token(double experts_per_token) const;
  // FLOPs spent once per forward call whatever the number of tokens: contracting factorised
  // weights (mpo, tensor_train) into the matrices the grouped products use. 0 for other banks.
  virtual int64_t flops_per_forward() const { return 0; }

  // Called by the trainer after backward and before clipping and the optimizer step: a bank may
  // drop gradients it must not apply this step (the mpo bank's gradient mask on its central core).
  // A pure function of (seed, step), so a resumed run makes the same choices.
  virtual void mask_gradients(uint64_t seed, int64_t step) {}
};

// The checks every bank makes: E >= 1 experts, hidden width H >= 1.
void check_bank_sizes(int64_t num_experts, int64_t hidden_dim);
// 1 <= rank <= min(D, H), with a message naming moe.rank (low_rank, shared_projection, lora).
void check_rank(int64_t rank, int64_t model_dim, int64_t hidden_dim);

}  // namespace moelab
