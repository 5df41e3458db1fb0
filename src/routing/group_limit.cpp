#include "moelab/routing/group_limit.h"

#include <limits>

#include "moelab/util/error.h"

namespace moelab {

void check_group_limit(int64_t num_experts, int64_t groups, int64_t group_k, int64_t k) {
  if (groups < 1 || num_experts % groups != 0)
    fail("moe.groups = {} must be >= 1 and divide the {} experts", groups, num_experts);
  if (group_k < 1 || group_k > groups) fail("moe.group_k = {} must be in [1, moe.groups = {}]", group_k, groups);
  const int64_t reachable = group_k * (num_experts / groups);
  if (k > reachable)
    fail("moe.k = {} exceeds the {} experts of the moe.group_k = {} kept groups", k, reachable, group_k);
}

torch::Tensor keep_top_groups(const torch::Tensor& scores, int64_t groups, int64_t group_k) {
  torch::NoGradGuard no_grad;
  const int64_t tokens = scores.size(0), per_group = scores.size(1) / groups;
  if (group_k == groups) return scores.detach();
  const auto grouped = scores.detach().reshape({tokens, groups, per_group});                // [N, G, M]
  const auto group_score = std::get<0>(grouped.topk(std::min<int64_t>(2, per_group), 2)).sum(2);  // [N, G]
  const auto kept = std::get<1>(group_score.topk(group_k, 1));                              // [N, group_k]
  auto mask = torch::ones({tokens, groups}, scores.options().dtype(torch::kBool));
  mask.scatter_(1, kept, false);  // true = dropped group
  return grouped.masked_fill(mask.unsqueeze(2), -std::numeric_limits<double>::infinity()).reshape(scores.sizes());
}

}  // namespace moelab
