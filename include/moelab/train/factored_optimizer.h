// The memory-lean optimiser of Shazeer et al. 2017 (appendix D) and Adafactor (Shazeer & Stern
// 2018): no first moment, and for every matrix a factored second moment -- running means of the
// squared gradient over its rows (R) and over its columns (C), from which each element's second
// moment is estimated as R_i C_j / mean(R). State for an [r, c] matrix is r + c numbers instead of
// Adam's 2 r c.
//
//   R <- b2 R + (1 - b2) mean_j g_ij^2,   C <- b2 C + (1 - b2) mean_i g_ij^2
//   V_ij = R_i C_j / mean(R) / (1 - b2^t)           (bias-corrected)
//   w_ij <- w_ij - lr * g_ij / (sqrt(V_ij) + eps)
//
// Tensors with more than two dimensions are factored over their last two; the leading ones are a
// batch (one R and C per slice). Vectors and scalars keep a full second moment.
//
// Expert groups (param groups whose options say expert_stacked) hold stacked expert weights whose
// first dimension is the expert. Their updates are lazy: an expert whose gradient slice is all zero
// (it received no tokens this step) is skipped entirely -- no state decay, no step count, no weight
// change -- and the work is done only on the slices of experts that received tokens. Each expert
// keeps its own step count for the bias correction.
#pragma once
#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>

#include <vector>

namespace moelab {

struct FactoredOptions : public torch::optim::OptimizerCloneableOptions<FactoredOptions> {
  FactoredOptions(double lr = 1e-2) : lr_(lr) {}
  TORCH_ARG(double, lr) = 1e-2;
  TORCH_ARG(double, beta2) = 0.999;
  TORCH_ARG(double, eps) = 1e-8;
  TORCH_ARG(double, weight_decay) = 0.0;  // L2, added to the gradient
  /// The group's tensors are stacked expert weights [E, ...] updated lazily per expert.
  TORCH_ARG(bool, expert_stacked) = false;

 public:  // TORCH_ARG leaves the section private
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

struct FactoredParamState : public torch::optim::OptimizerCloneableParamState<FactoredParamState> {
  TORCH_ARG(torch::Tensor, row);    // [..., r]  (factored)
  TORCH_ARG(torch::Tensor, col);    // [..., c]  (factored)
  TORCH_ARG(torch::Tensor, full);   // same shape as the tensor (vectors, scalars)
  TORCH_ARG(torch::Tensor, steps);  // [E] per-expert step counts in expert groups, else [1]

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

class FactoredOptimizer : public torch::optim::Optimizer {
 public:
  FactoredOptimizer(std::vector<torch::optim::OptimizerParamGroup> groups, FactoredOptions defaults);

  torch::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  // Numbers of optimiser state held for `param` (for memory accounting and tests).
  int64_t state_numel(const torch::Tensor& param) const;

 private:
  FactoredParamState& state_of(const torch::Tensor& param, bool expert_stacked);
  template <typename Self, typename Archive>
  static void serialize(Self& self, Archive& archive) {
    torch::optim::serialize<FactoredParamState, FactoredOptions>(archive, self);
  }
};

}  // namespace moelab
