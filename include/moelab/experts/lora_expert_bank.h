// LoRA experts (MoLoRA, Zadouri et al. 2023): one base FFN shared by all experts, and per expert a
// low-rank delta on each of its two weight matrices:
//   h_e(x) = relu(x (W_in + A_in,e B_in,e) + b_in),   y_e(x) = h_e(x) (W_out + A_out,e B_out,e) + b_out
// The base input product x W_in is computed once per token; only the deltas run per expert group.
// B starts at zero (as in LoRA), so every expert starts equal to the base. With freeze_base the
// base gets no gradient: parameter-efficient fine-tuning of a trained FFN.
//
// Shape legend: M rows, N tokens, D model width, H hidden width, r rank, E experts.
#pragma once
#include <torch/arg.h>

#include "moelab/experts/expert_bank.h"

namespace moelab {

struct LoraExpertBankOptions {
  LoraExpertBankOptions(int64_t model_dim, int64_t hidden_dim, int64_t num_experts, int64_t rank)
      : model_dim_(model_dim), hidden_dim_(hidden_dim), num_experts_(num_experts), rank_(rank) {}
  TORCH_ARG(int64_t, model_dim);
  TORCH_ARG(int64_t, hidden_dim);
  TORCH_ARG(int64_t, num_experts);
  /// Global id of this bank's expert 0 when the experts are split over ranks (see expert_init.h).
  TORCH_ARG(int64_t, first_expert) = 0;
  /// Rank r of every delta, 1 <= r <= min(D, H).
  TORCH_ARG(int64_t, rank);
  /// Keep the shared base fixed (no gradient).
  TORCH_ARG(bool, freeze_base) = false;
};

// A shared base FFN with per-expert low-rank deltas A_e B_e on both matrices, whatever the factors
// are made from (the lora bank's own parameters, or factors a tensor_train bank contracts from its
// cores). The base input product runs once per token. Returns rows in plan order, [M, D].
struct LowRankDeltas {
  torch::Tensor a_in, b_in;    // [E, D, r], [E, r, H]
  torch::Tensor a_out, b_out;  // [E, H, r], [E, r, D]
};
torch::Tensor base_plus_delta_forward(const torch::Tensor& x, const DispatchPlan& plan, const torch::Tensor& w_in,
                                      const torch::Tensor& b_in, const torch::Tensor& w_out, const torch::Tensor& b_out,
                                      const LowRankDeltas& deltas);
// Every expert on every token from the materialised W + A_e B_e, [N, E, D]: the test oracle.
torch::Tensor base_plus_delta_reference(const torch::Tensor& x, const torch::Tensor& w_in, const torch::Tensor& b_in,
                                        const torch::Tensor& w_out, const torch::Tensor& b_out,
                                        const LowRankDeltas& deltas);

class LoraExpertBank : public ExpertBank {
 public:
  explicit LoraExpertBank(const LoraExpertBankOptions& options);

  torch::Tensor forward(const torch::Tensor& x, const DispatchPlan& plan) override;
  torch::Tensor all_experts_reference(const torch::Tensor& x) override;
  int64_t num_experts() const override { return options.num_experts(); }
  std::vector<torch::Tensor> shared_parameters() const override;
  // x W_in once per token; per slot the base output product and the four delta products.
  int64_t flops_shared_per_token() const override { return 2 * options.model_dim() * options.hidden_dim(); }
  int64_t flops_per_slot() const override {
    return 2 * options.hidden_dim() * options.model_dim() + 4 * options.rank() * (options.model_dim() + options.hidden_dim());
  }
  void pretty_print(std::ostream& stream) const override;

  LoraExpertBankOptions options;
  torch::Tensor w_in, b_in, w_out, b_out;  // shared base: [D, H], [H], [H, D], [D]
  torch::Tensor lora_a_in, lora_b_in;          // per expert: [E, D, r], [E, r, H]
  torch::Tensor lora_a_out, lora_b_out;        // per expert: [E, H, r], [E, r, D]
};

}  // namespace moelab
