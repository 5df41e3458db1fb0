// Initial values of an expert bank that do not depend on how many of the experts this process
// holds. Expert g's slice of every stacked tensor is drawn from its own generator, seeded by (the
// bank's seed, the tensor's place in the bank, g); a tensor shared by every expert from (the bank's
// seed, its place). The bank's seed is a single draw from the default generator. So under expert
// parallelism a rank that holds experts [a, b) builds only those, with bit for bit the values one
// process holding all E gives them, and every draw after the bank is the same whatever W is.
#pragma once
#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace moelab {

class ExpertInit {
 public:
  // `first_expert`: the global id of this bank's expert 0 (0 unless experts are split over ranks).
  explicit ExpertInit(int64_t first_expert = 0);

  // Stacked [E_local, ...]: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), nn.Linear's scale, per expert.
  torch::Tensor linear(const std::vector<int64_t>& shape, int64_t fan_in);
  // Stacked [E_local, ...]: N(0, std^2) per expert.
  torch::Tensor normal(const std::vector<int64_t>& shape, double std);
  // The same distributions for a tensor every expert shares (no expert dimension).
  torch::Tensor shared_linear(const std::vector<int64_t>& shape, int64_t fan_in);
  torch::Tensor shared_normal(const std::vector<int64_t>& shape, double std);

 private:
  template <typename Fill>
  torch::Tensor stacked(const std::vector<int64_t>& shape, Fill&& fill);
  at::Generator generator_for(uint64_t tensor, uint64_t stream) const;

  uint64_t seed_ = 0;
  int64_t first_expert_ = 0;
  uint64_t next_tensor_ = 0;  // tensors are numbered in the order the bank asks for them
};

}  // namespace moelab
