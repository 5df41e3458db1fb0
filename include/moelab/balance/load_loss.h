// Load loss with the smooth load estimator (Shazeer et al. 2017, appendix A, eq. 8-11).
//
// The number of tokens an expert receives is a step function of the gate logits, so it has no
// gradient. With Gaussian noise on the logits, P(expert e in top-k for token n) is smooth:
//   P(n, e) = Phi((clean[n, e] - kth_excluding(noisy[n, :], e)) / noise_std[n, e])
// where kth_excluding is the k-th largest noisy logit among the other experts. That value is the
// (k+1)-th largest noisy logit when e is itself in the top-k, else the k-th largest. Load(e) =
// sum_n P(n, e), and the loss is CV^2(Load).
//
// Shape legend: N tokens, E experts, K slots.
#pragma once
#include <torch/types.h>

namespace moelab {

// Below this, noise_std is clamped: an estimator dividing by a vanishing standard deviation returns
// NaN/Inf (a bug in public ports when the trainable noise collapses).
inline constexpr double kMinNoiseStd = 1e-6;

// clean_logits, noisy_logits, noise_std: [N, E]; top_noisy: [N, K+1] the K+1 largest noisy logits
// per token in descending order. Requires K < E. Returns the smooth load, [E].
torch::Tensor smooth_load(const torch::Tensor& clean_logits, const torch::Tensor& noisy_logits,
                          const torch::Tensor& noise_std, const torch::Tensor& top_noisy, int64_t k);

// Per-token probabilities P(n, e) behind smooth_load, [N, E] (exposed for tests).
torch::Tensor prob_in_top_k(const torch::Tensor& clean_logits, const torch::Tensor& noisy_logits,
                            const torch::Tensor& noise_std, const torch::Tensor& top_noisy, int64_t k);

// Counts of tokens per expert from a [N, E] gate matrix (non-differentiable), [E] float.
torch::Tensor hard_load(const torch::Tensor& gates);

}  // namespace moelab
