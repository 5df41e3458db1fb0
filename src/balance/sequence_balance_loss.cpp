#include "moelab/balance/sequence_balance_loss.h"

#include "moelab/types/routing.h"

namespace moelab {

torch::Tensor sequence_balance_loss(const torch::Tensor& probs, const torch::Tensor& expert_index,
                                    const torch::Tensor& sequence, int64_t sequences) {
  TORCH_CHECK(probs.dim() == 2 && expert_index.dim() == 2 && expert_index.size(0) == probs.size(0) &&
                  sequence.dim() == 1 && sequence.size(0) == probs.size(0),
              "sequence_balance_loss expects probs [N, E], expert_index [N, K] and sequence [N]");
  const int64_t experts = probs.size(1);
  const auto index = sequence.to(probs.device(), torch::kInt64);
  // Slots per (token, expert), empty slots in a spare column that is cut off.
  const auto column = expert_index.masked_fill(expert_index < 0, experts);
  const auto per_token = torch::zeros({probs.size(0), experts + 1}, probs.options())
                             .scatter_add_(1, column, torch::ones(column.sizes(), probs.options()))
                             .narrow(1, 0, experts);
  const auto counts = torch::zeros({sequences, experts}, probs.options()).index_add_(0, index, per_token);
  const auto prob_sums = torch::zeros({sequences, experts}, probs.options()).index_add(0, index, probs);
  const auto tokens = torch::zeros({sequences}, probs.options()).index_add_(0, index, torch::ones({probs.size(0)}, probs.options()));
  const auto fraction = counts / counts.sum(1, /*keepdim=*/true).clamp_min(1.0);
  const auto mean_probs = prob_sums / tokens.clamp_min(1.0).unsqueeze(1);
  const auto per_sequence = static_cast<double>(experts) * (fraction * mean_probs).sum(1);  // [B]
  const auto present = (tokens > 0).to(probs.scalar_type());
  return (per_sequence * present).sum() / present.sum().clamp_min(1.0);
}

}  // namespace moelab
