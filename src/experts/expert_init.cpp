#include "moelab/experts/expert_init.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <mutex>

#include "moelab/util/error.h"
#include "moelab/util/mix64.h"

namespace moelab {

namespace {

double linear_bound(int64_t fan_in) { return 1.0 / std::sqrt(static_cast<double>(fan_in)); }

// Stream 0 is the shared tensors'; expert g draws from stream g + 1.
constexpr uint64_t kSharedStream = 0;

}  // namespace

ExpertInit::ExpertInit(int64_t first_expert) : first_expert_(first_expert) {
  if (first_expert < 0) fail("an expert bank's first expert id must be >= 0, got {}", first_expert);
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  seed_ = generator.get<at::CPUGeneratorImpl>()->random64();
}

at::Generator ExpertInit::generator_for(uint64_t tensor, uint64_t stream) const {
  return at::detail::createCPUGenerator(mix64(mix64(seed_ ^ mix64(tensor)) ^ stream));
}

template <typename Fill>
torch::Tensor ExpertInit::stacked(const std::vector<int64_t>& shape, Fill&& fill) {
  if (shape.empty()) fail("a stacked expert tensor needs an expert dimension");
  const uint64_t tensor = next_tensor_++;
  auto out = torch::empty(shape);
  for (int64_t e = 0; e < shape[0]; ++e) {
    auto slice = out[e];
    fill(slice, generator_for(tensor, static_cast<uint64_t>(first_expert_ + e) + 1));
  }
  return out;
}

torch::Tensor ExpertInit::linear(const std::vector<int64_t>& shape, int64_t fan_in) {
  const double bound = linear_bound(fan_in);
  return stacked(shape, [&](torch::Tensor& slice, at::Generator generator) { slice.uniform_(-bound, bound, generator); });
}

torch::Tensor ExpertInit::normal(const std::vector<int64_t>& shape, double std) {
  return stacked(shape, [&](torch::Tensor& slice, at::Generator generator) { slice.normal_(0.0, std, generator); });
}

torch::Tensor ExpertInit::shared_linear(const std::vector<int64_t>& shape, int64_t fan_in) {
  const double bound = linear_bound(fan_in);
  return torch::empty(shape).uniform_(-bound, bound, generator_for(next_tensor_++, kSharedStream));
}

torch::Tensor ExpertInit::shared_normal(const std::vector<int64_t>& shape, double std) {
  return torch::empty(shape).normal_(0.0, std, generator_for(next_tensor_++, kSharedStream));
}

}  // namespace moelab
