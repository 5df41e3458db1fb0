#include "moelab/experts/expert_bank.h"

#include <cmath>

namespace moelab {

torch::Tensor linear_init(const std::vector<int64_t>& shape, int64_t fan_in) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  return torch::empty(shape).uniform_(-bound, bound);
}

int64_t ExpertBank::params_total() const {
  int64_t total = 0;
  for (const auto& p : parameters()) total += p.numel();
  return total;
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
