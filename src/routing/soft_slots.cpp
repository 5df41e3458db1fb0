#include "moelab/routing/soft_slots.h"

#include <torch/nn/functional/normalization.h>

#include <cmath>
#include <limits>

#include "moelab/util/error.h"

namespace moelab {

SoftSlots::SoftSlots(int64_t model_dim, int64_t num_experts, int64_t slots_per_expert)
    : model_dim_(model_dim), num_experts_(num_experts), slots_per_expert_(slots_per_expert) {
  if (model_dim < 1) fail("Soft MoE width must be >= 1, got {}", model_dim);
  if (num_experts < 1) fail("Soft MoE needs at least one expert, got {}", num_experts);
  if (slots_per_expert < 1) fail("moe.soft_slots (slots per expert) must be >= 1, got {}", slots_per_expert);
  // The paper's LeCun-normal initialisation of phi; after normalisation only directions matter.
  slot_embedding = register_parameter("slot_embedding",
                                      torch::randn({model_dim, num_slots()}) / std::sqrt(static_cast<double>(model_dim)));
  scale = register_parameter("scale", torch::ones({}));
}

SoftSlotWeights SoftSlots::forward(const torch::Tensor& x, const torch::Tensor& real) const {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == model_dim_, "Soft MoE expects [B, T, ", model_dim_, "], got ", x.sizes());
  TORCH_CHECK(real.sizes() == x.sizes().slice(0, 2), "real must be [B, T], got ", real.sizes());
  namespace F = torch::nn::functional;
  const auto unit = F::NormalizeFuncOptions().dim(-1);
  const auto x_unit = F::normalize(x, unit);
  const auto phi_unit = F::normalize(slot_embedding.to(x.scalar_type()), F::NormalizeFuncOptions().dim(0));
  SoftSlotWeights out;
  out.slots_per_expert = slots_per_expert_;
  out.logits = scale.to(x.scalar_type()) * torch::matmul(x_unit, phi_unit);  // [B, T, S]
  const auto any_real = real.any(/*dim=*/1, /*keepdim=*/true);
  const auto counted = real.logical_or(any_real.logical_not()).unsqueeze(2);  // [B, T, 1]
  out.dispatch = out.logits.masked_fill(counted.logical_not(), -std::numeric_limits<double>::infinity()).softmax(1);
  out.combine = out.logits.softmax(2);
  return out;
}

}  // namespace moelab
