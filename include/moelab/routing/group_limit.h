// Group-limited routing (DeepSeek-V2's device-limited and DeepSeek-V3's node-limited routing): the
// E experts sit in G equal groups (in V3, one group per node); each token first keeps the
// group_k groups whose two best scores sum highest, and then picks its top-k experts among those
// groups only. Limiting a token to a few groups bounds how many nodes its activations travel to.
//
// Shape legend: N tokens, E experts, G groups, M = E / G experts per group.
#pragma once
#include <torch/types.h>

namespace moelab {

// Throws moelab::Error unless G >= 1 divides E, 1 <= group_k <= G and k fits in the kept groups
// (k <= group_k * M).
void check_group_limit(int64_t num_experts, int64_t groups, int64_t group_k, int64_t k);

// scores [N, E] (what top-k will rank) -> the same scores with every expert outside the token's
// kept groups set to -inf, so a top-k afterwards can only pick inside them. A group's score is the
// sum of its two highest expert scores (its one score when M = 1). No gradient: it only chooses.
torch::Tensor keep_top_groups(const torch::Tensor& scores, int64_t groups, int64_t group_k);

}  // namespace moelab
