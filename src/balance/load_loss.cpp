#include "moelab/balance/load_loss.h"

#include <cmath>

namespace moelab {

namespace {

torch::Tensor normal_cdf(const torch::Tensor& z) { return 0.5 * torch::erfc(-z / std::sqrt(2.0)); }

}  // namespace

torch::Tensor prob_in_top_k(const torch::Tensor& clean_logits, const torch::Tensor& noisy_logits,
                            const torch::Tensor& noise_std, const torch::Tensor& top_noisy, int64_t k) {
  const auto num_experts = clean_logits.size(1);
  TORCH_CHECK(k >= 1 && k < num_experts, "smooth load needs 1 <= k < experts, got k = ", k,
              ", experts = ", num_experts);
  TORCH_CHECK(top_noisy.size(1) >= k + 1, "top_noisy must hold the k+1 largest noisy logits");
  const auto threshold_if_in = top_noisy.select(1, k).unsqueeze(1);       // [N, 1] (k+1)-th largest
  const auto threshold_if_out = top_noisy.select(1, k - 1).unsqueeze(1);  // [N, 1] k-th largest
  const auto is_in = noisy_logits > threshold_if_in;                      // [N, E]
  const auto std = noise_std.clamp_min(kMinNoiseStd);
  const auto prob_if_in = normal_cdf((clean_logits - threshold_if_in) / std);
  const auto prob_if_out = normal_cdf((clean_logits - threshold_if_out) / std);
  return torch::where(is_in, prob_if_in, prob_if_out);
}

torch::Tensor smooth_load(const torch::Tensor& clean_logits, const torch::Tensor& noisy_logits,
                          const torch::Tensor& noise_std, const torch::Tensor& top_noisy, int64_t k) {
  return prob_in_top_k(clean_logits, noisy_logits, noise_std, top_noisy, k).sum(0);
}

torch::Tensor hard_load(const torch::Tensor& gates) { return (gates > 0).sum(0).to(gates.scalar_type()); }

}  // namespace moelab
