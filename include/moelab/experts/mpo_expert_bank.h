// MPO experts (Gao et al. 2022, "Parameter-Efficient Mixture-of-Experts Architecture for
// Pre-trained Language Models via Matrix Product Operators"): each expert's two weight matrices
// are matrix product operators (mpo_decomposition.h) of n cores. The central core of each matrix
// is one tensor shared by all experts and holds most of the parameters; the n - 1 auxiliary cores
// are per expert and small. Gradient mask: the central cores take an optimizer step only in a
// random fraction p of the steps (central_update_p), so the shared knowledge moves slowly while the
// auxiliary cores specialise.
//
// Accepted shapes: model_factors multiply to D and hidden_factors to H, both lists of the same odd
// length n >= 3 (core k couples model factor k with hidden factor k; the central core is k = n/2).
// Bond k is min(bond, product of the modes left of it, product right of it); at a bond that large
// no bond is truncated and the MPO can represent any matrix.
//
// The forward contracts the cores into stacked [E, D, H] and [E, H, D] weights once per call (cost
// flops_per_forward(), independent of tokens) and then runs exactly like the ffn bank.
//
// Shape legend: M rows, N tokens, D model width, H hidden width, E experts, m_k = i_k * j_k.
#pragma once
#include <torch/arg.h>

#include <vector>

#include "moelab/experts/expert_bank.h"

namespace moelab {

struct MpoExpertBankOptions {
  MpoExpertBankOptions(int64_t model_dim, int64_t hidden_dim, int64_t num_experts, std::vector<int64_t> model_factors,
                       std::vector<int64_t> hidden_factors, int64_t bond)
      : model_dim_(model_dim),
        hidden_dim_(hidden_dim),
        num_experts_(num_experts),
        model_factors_(std::move(model_factors)),
        hidden_factors_(std::move(hidden_factors)),
        bond_(bond) {}
  TORCH_ARG(int64_t, model_dim);
  TORCH_ARG(int64_t, hidden_dim);
  TORCH_ARG(int64_t, num_experts);
  /// Global id of this bank's expert 0 when the experts are split over ranks (see expert_init.h).
  TORCH_ARG(int64_t, first_expert) = 0;
  /// Factors of D, one per core.
  TORCH_ARG(std::vector<int64_t>, model_factors);
  /// Factors of H, one per core; the same count as model_factors.
  TORCH_ARG(std::vector<int64_t>, hidden_factors);
  /// Largest bond dimension.
  TORCH_ARG(int64_t, bond);
  /// Fraction of steps in which the central cores are updated (the gradient mask), in [0, 1].
  TORCH_ARG(double, central_update_p) = 1.0;
};

// One MPO matrix of the bank: its cores, the central one shared, the others stacked per expert.
struct MpoMatrix {
  std::vector<int64_t> row_factors, col_factors;
  std::vector<torch::Tensor> cores;  // cores[central] is [a, m, b]; the others [E, a, m, b]
};

class MpoExpertBank : public ExpertBank {
 public:
  explicit MpoExpertBank(const MpoExpertBankOptions& options);

  torch::Tensor forward(const torch::Tensor& x, const DispatchPlan& plan) override;
  torch::Tensor all_experts_reference(const torch::Tensor& x) override;
  int64_t num_experts() const override { return options.num_experts(); }
  std::vector<torch::Tensor> shared_parameters() const override;
  int64_t flops_per_slot() const override { return 4 * options.model_dim() * options.hidden_dim(); }
  int64_t flops_per_forward() const override;
  void mask_gradients(uint64_t seed, int64_t step) override;
  void pretty_print(std::ostream& stream) const override;

  // Index of the shared central core in every chain.
  int64_t central_index() const { return static_cast<int64_t>(options.model_factors().size()) / 2; }
  // Whether the gradient mask lets the central cores move at this step.
  bool central_updates_at(uint64_t seed, int64_t step) const;
  // The contracted weights: [E, D, H] and [E, H, D].
  torch::Tensor weight_in() const;
  torch::Tensor weight_out() const;

  MpoExpertBankOptions options;
  MpoMatrix in, out;              // W_in [D, H] and W_out [H, D]
  torch::Tensor b_in, b_out;      // per expert: [E, H], [E, D]
};

// The checks behind MpoExpertBank's accepted shapes, with messages naming the config keys.
void check_mpo_shape(const std::vector<int64_t>& model_factors, const std::vector<int64_t>& hidden_factors,
                     int64_t model_dim, int64_t hidden_dim, int64_t bond);

}  // namespace moelab
