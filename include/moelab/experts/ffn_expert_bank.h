// E feed-forward experts (D -> H -> D, ReLU), Shazeer et al. 2017 section 5. Weights are stacked
// ([E, D, H], [E, H, D]) so the bank runs as two grouped matrix products, never a loop over modules.
//
// Shape legend: M rows, N tokens, D model width, H expert hidden width, E experts.
#pragma once
#include <torch/arg.h>

#include "moelab/experts/expert_bank.h"

namespace moelab {

struct FfnExpertBankOptions {
  FfnExpertBankOptions(int64_t model_dim, int64_t hidden_dim, int64_t num_experts)
      : model_dim_(model_dim), hidden_dim_(hidden_dim), num_experts_(num_experts) {}
  /// Width D of the token features (input and output).
  TORCH_ARG(int64_t, model_dim);
  /// Hidden width H of each expert.
  TORCH_ARG(int64_t, hidden_dim);
  /// Number of experts E.
  TORCH_ARG(int64_t, num_experts);
  /// Global id of this bank's expert 0 when the experts are split over ranks (see expert_init.h).
  TORCH_ARG(int64_t, first_expert) = 0;
  /// Dropout on each expert's hidden activations while training (the BiLSTM gating study's 0.5).
  TORCH_ARG(double, hidden_dropout) = 0.0;
};

// The computation of E stacked FFN experts, whatever their weights are made from (the ffn bank's
// own parameters, or weights an mpo bank contracts from its cores): rows in plan order, [M, D].
// hidden_dropout applies to the hidden activations when `training`.
torch::Tensor stacked_ffn_forward(const torch::Tensor& x, const DispatchPlan& plan, const torch::Tensor& w_in,
                                  const torch::Tensor& b_in, const torch::Tensor& w_out, const torch::Tensor& b_out,
                                  double hidden_dropout = 0.0, bool training = false);
// Every expert on every token, [N, E, D], from explicit weights [E, D, H] and [E, H, D]: the test
// oracle of every bank, each materialising its experts' weights its own way. Biases are [E, H] and
// [E, D], or [H] and [D] when shared.
torch::Tensor stacked_ffn_reference(const torch::Tensor& x, const torch::Tensor& w_in, const torch::Tensor& b_in,
                                    const torch::Tensor& w_out, const torch::Tensor& b_out);

class FfnExpertBank : public ExpertBank {
 public:
  explicit FfnExpertBank(const FfnExpertBankOptions& options);
  void reset();

  // Parameters such a bank holds, without building one (allocating and drawing random numbers);
  // a test keeps it equal to params_total() of a built bank.
  static int64_t params_for(const FfnExpertBankOptions& options);

  torch::Tensor forward(const torch::Tensor& x, const DispatchPlan& plan) override;
  torch::Tensor all_experts_reference(const torch::Tensor& x) override;
  int64_t num_experts() const override { return options.num_experts(); }
  int64_t flops_per_slot() const override { return 4 * options.model_dim() * options.hidden_dim(); }
  void pretty_print(std::ostream& stream) const override;

  FfnExpertBankOptions options;
  torch::Tensor w_in;   // [E, D, H]
  torch::Tensor b_in;   // [E, H]
  torch::Tensor w_out;  // [E, H, D]
  torch::Tensor b_out;  // [E, D]
};

}  // namespace moelab
