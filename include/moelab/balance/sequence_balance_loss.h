// DeepSeek-V3's complementary sequence-wise balance loss (DeepSeek-AI 2024, eq. 17-20): the Switch
// loss E * sum_e f_e * P_e taken inside every sequence on its own and averaged over the sequences,
// so that no single sequence leans on a few experts even when the batch as a whole is balanced
// (the aux-loss-free biases balance only the batch). f_e is the share of the sequence's token-slots
// on expert e (no gradient), P_e the sequence's mean router probability of e.
//
// Shape legend: N tokens, E experts, K slots, B sequences.
#pragma once
#include <torch/types.h>

#include <cstdint>

namespace moelab {

// probs [N, E] (differentiable); expert_index [N, K] int64 (kNoExpert = empty slot); sequence [N]
// int64 in [0, sequences). Sequences without tokens are left out of the mean.
torch::Tensor sequence_balance_loss(const torch::Tensor& probs, const torch::Tensor& expert_index,
                                    const torch::Tensor& sequence, int64_t sequences);

}  // namespace moelab
