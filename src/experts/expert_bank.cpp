#include "moelab/experts/expert_bank.h"

#include <algorithm>
#include <cmath>

#include "moelab/util/error.h"
#include "moelab/util/parameter_count.h"

namespace moelab {

void check_bank_sizes(int64_t num_experts, int64_t hidden_dim) {
  if (num_experts < 1) fail("an expert bank needs >= 1 expert, got {}", num_experts);
  if (hidden_dim < 1) fail("moe.expert_hidden must be >= 1, got {}", hidden_dim);
}

void check_rank(int64_t rank, int64_t model_dim, int64_t hidden_dim) {
  if (rank < 1 || rank > std::min(model_dim, hidden_dim))
    fail("moe.rank must be in [1, min(model width {}, expert hidden {}) = {}], got {}", model_dim, hidden_dim,
         std::min(model_dim, hidden_dim), rank);
}

int64_t ExpertBank::params_total() const { return count_parameters(*this); }

int64_t ExpertBank::params_shared() const {
  int64_t total = 0;
  for (const auto& t : shared_parameters()) total += t.numel();
  return total;
}

std::vector<torch::Tensor> ExpertBank::per_expert_parameters() const {
  const auto shared = shared_parameters();
  std::vector<torch::Tensor> out;
  for (const auto& p : parameters()) {
    const bool is_shared = std::any_of(shared.begin(), shared.end(), [&](const torch::Tensor& s) { return s.is_same(p); });
    if (!is_shared) out.push_back(p);
  }
  return out;
}

bool ExpertBank::is_per_expert(const torch::Tensor& parameter) const {
  const auto stacked = per_expert_parameters();
  return std::any_of(stacked.begin(), stacked.end(), [&](const torch::Tensor& p) { return p.is_same(parameter); });
}

int64_t ExpertBank::params_per_expert_unique() const { return (params_total() - params_shared()) / num_experts(); }

int64_t ExpertBank::params_active_per_token(double experts_per_token) const {
  return params_shared() +
         static_cast<int64_t>(std::llround(experts_per_token * static_cast<double>(params_per_expert_unique())));
}

int64_t ExpertBank::flops_per_token(double experts_per_token) const {
  return flops_shared_per_token() +
         static_cast<int64_t>(std::llround(experts_per_token * static_cast<double>(flops_per_slot())));
}

}  // namespace moelab
