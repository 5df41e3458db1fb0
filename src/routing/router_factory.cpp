#include <fmt/format.h>
#include <fmt/ranges.h>

#include "moelab/routing/base_router.h"
#include "moelab/routing/expert_choice_router.h"
#include "moelab/routing/hash_router.h"
#include "moelab/routing/hierarchical_router.h"
#include "moelab/routing/noisy_topk_router.h"
#include "moelab/routing/router_options.h"
#include "moelab/routing/softmax_router.h"
#include "moelab/routing/switch_router.h"
#include "moelab/routing/top2_random_router.h"
#include "moelab/routing/topk_router.h"
#include "moelab/util/error.h"

namespace moelab {

const std::vector<std::string>& router_names() {
  static const std::vector<std::string> names = {"softmax", "topk",        "topk_mask",     "noisy_topk", "switch",
                                                 "top2_random", "base", "expert_choice", "hash",       "hierarchical"};
  return names;
}

std::shared_ptr<Router> make_router(const std::string& name, const RouterOptions& options) {
  if (name == "softmax") return std::make_shared<SoftmaxRouter>(options);
  if (name == "topk") return std::make_shared<TopKRouter>(options, /*renormalize=*/false);
  if (name == "topk_mask") return std::make_shared<TopKRouter>(options, /*renormalize=*/true);
  if (name == "noisy_topk") return std::make_shared<NoisyTopKRouter>(options);
  if (name == "switch") return std::make_shared<SwitchRouter>(options);
  if (name == "top2_random") return std::make_shared<Top2RandomRouter>(options);
  if (name == "base") return std::make_shared<BaseRouter>(options);
  if (name == "expert_choice") return std::make_shared<ExpertChoiceRouter>(options);
  if (name == "hash") return std::make_shared<HashRouter>(options);
  if (name == "hierarchical") return std::make_shared<HierarchicalRouter>(options);
  fail("unknown moe.router '{}' (known: {})", name, fmt::join(router_names(), ", "));
}

}  // namespace moelab
