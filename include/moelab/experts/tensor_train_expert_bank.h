// Tensor-train adapter experts (TT-LoRA style; Oseledets 2011's tensor-train format applied to
// adapter deltas): one base FFN shared by all experts, and per expert a delta on each weight
// matrix stored as a tensor train. The delta of W_in [D, H] is the tensor over modes
// (d_1..d_p, h_1..h_q) with cores [r_{k-1}, n_k, r_k]:
//   dW_in,e[(d_1..d_p), (h_1..h_q)] = G_1[d_1] ... G_p[d_p] G_{p+1}[h_1] ... G_{p+q}[h_q].
// The bond r_p between the last D-core and the first H-core splits the train into A_e [D, r_p]
// (cores 1..p) and B_e [r_p, H] (cores p+1..p+q), so dW_in,e = A_e B_e: a LoRA delta whose
// factors are themselves compressed. The bank contracts A_e, B_e once per forward (cheap) and
// runs the lora bank's computation: the base product once per token, the delta per expert group.
// W_out [H, D] likewise over (h_1..h_q, d_1..d_p). The last core of each B train starts at zero,
// so every expert starts equal to the base.
//
// TT ranks: every bond is min(rank, product of modes left of it, product right of it).
//
// Shape legend: M rows, N tokens, D model width, H hidden width, r rank, E experts.
#pragma once
#include <torch/arg.h>

#include <vector>

#include "moelab/experts/expert_bank.h"
#include "moelab/experts/lora_expert_bank.h"

namespace moelab {

struct TensorTrainExpertBankOptions {
  TensorTrainExpertBankOptions(int64_t model_dim, int64_t hidden_dim, int64_t num_experts,
                               std::vector<int64_t> model_factors, std::vector<int64_t> hidden_factors, int64_t rank)
      : model_dim_(model_dim),
        hidden_dim_(hidden_dim),
        num_experts_(num_experts),
        model_factors_(std::move(model_factors)),
        hidden_factors_(std::move(hidden_factors)),
        rank_(rank) {}
  TORCH_ARG(int64_t, model_dim);
  TORCH_ARG(int64_t, hidden_dim);
  TORCH_ARG(int64_t, num_experts);
  /// Global id of this bank's expert 0 when the experts are split over ranks (see expert_init.h).
  TORCH_ARG(int64_t, first_expert) = 0;
  /// Factors of D: one TT core per factor.
  TORCH_ARG(std::vector<int64_t>, model_factors);
  /// Factors of H: one TT core per factor.
  TORCH_ARG(std::vector<int64_t>, hidden_factors);
  /// Largest TT rank, 1 <= rank <= min(D, H).
  TORCH_ARG(int64_t, rank);
  /// Keep the shared base fixed (no gradient).
  TORCH_ARG(bool, freeze_base) = false;
};

// One tensor-train delta: the cores of A (over the row modes) and of B (over the column modes).
struct TensorTrainDelta {
  std::vector<int64_t> row_factors, col_factors;
  std::vector<torch::Tensor> a_cores, b_cores;  // each [E, r, n, r']
  torch::Tensor a() const;                        // [E, rows, r_mid]
  torch::Tensor b() const;                        // [E, r_mid, cols]
};

class TensorTrainExpertBank : public ExpertBank {
 public:
  explicit TensorTrainExpertBank(const TensorTrainExpertBankOptions& options);

  torch::Tensor forward(const torch::Tensor& x, const DispatchPlan& plan) override;
  torch::Tensor all_experts_reference(const torch::Tensor& x) override;
  int64_t num_experts() const override { return options.num_experts(); }
  std::vector<torch::Tensor> shared_parameters() const override;
  int64_t flops_shared_per_token() const override { return 2 * options.model_dim() * options.hidden_dim(); }
  int64_t flops_per_slot() const override;
  int64_t flops_per_forward() const override;
  void pretty_print(std::ostream& stream) const override;

  // The middle TT rank r_p: the rank of every expert's delta.
  int64_t delta_rank() const;
  LowRankDeltas deltas() const;

  TensorTrainExpertBankOptions options;
  torch::Tensor w_in, b_in, w_out, b_out;  // shared base: [D, H], [H], [H, D], [D]
  TensorTrainDelta delta_in, delta_out;    // deltas of W_in [D, H] and W_out [H, D]
};

}  // namespace moelab
