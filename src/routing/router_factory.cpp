#include <fmt/format.h>
#include <fmt/ranges.h>

#include <functional>
#include <utility>

#include "moelab/routing/base_router.h"
#include "moelab/routing/bias_balanced_router.h"
#include "moelab/routing/expert_choice_router.h"
#include "moelab/routing/hash_router.h"
#include "moelab/routing/hierarchical_router.h"
#include "moelab/routing/noisy_topk_router.h"
#include "moelab/routing/relu_router.h"
#include "moelab/routing/router_options.h"
#include "moelab/routing/softmax_router.h"
#include "moelab/routing/switch_router.h"
#include "moelab/routing/top2_random_router.h"
#include "moelab/routing/topk_router.h"
#include "moelab/util/error.h"

namespace moelab {

void check_router_sizes(const RouterOptions& options) {
  if (options.num_experts() < 1) fail("moe.experts must be >= 1 for a router, got {}", options.num_experts());
  if (options.k() < 1) fail("moe.k must be >= 1, got {}", options.k());
  if (options.model_dim() < 1) fail("router width must be >= 1, got {}", options.model_dim());
}

void check_k_fits(const RouterOptions& options) {
  if (options.k() > options.num_experts())
    fail("moe.k = {} exceeds moe.experts = {}", options.k(), options.num_experts());
}

namespace {

using RouterFactory = std::function<std::shared_ptr<Router>(const RouterOptions&)>;

// Name -> constructor, in the README's order; router_names() is read from this one table.
const std::vector<std::pair<std::string, RouterFactory>>& router_table() {
  static const std::vector<std::pair<std::string, RouterFactory>> table = {
      {"softmax", [](const RouterOptions& o) { return std::make_shared<SoftmaxRouter>(o); }},
      {"topk", [](const RouterOptions& o) { return std::make_shared<TopKRouter>(o, /*renormalize=*/false); }},
      {"topk_mask", [](const RouterOptions& o) { return std::make_shared<TopKRouter>(o, /*renormalize=*/true); }},
      {"noisy_topk", [](const RouterOptions& o) { return std::make_shared<NoisyTopKRouter>(o); }},
      {"switch", [](const RouterOptions& o) { return std::make_shared<SwitchRouter>(o); }},
      {"top2_random", [](const RouterOptions& o) { return std::make_shared<Top2RandomRouter>(o); }},
      {"base", [](const RouterOptions& o) { return std::make_shared<BaseRouter>(o); }},
      {"expert_choice", [](const RouterOptions& o) { return std::make_shared<ExpertChoiceRouter>(o); }},
      {"hash", [](const RouterOptions& o) { return std::make_shared<HashRouter>(o); }},
      {"hierarchical", [](const RouterOptions& o) { return std::make_shared<HierarchicalRouter>(o); }},
      {"aux_free", [](const RouterOptions& o) { return std::make_shared<BiasBalancedRouter>(o, /*update_bias=*/true); }},
      {"group_limited",
       [](const RouterOptions& o) { return std::make_shared<BiasBalancedRouter>(o, /*update_bias=*/false); }},
      {"relu", [](const RouterOptions& o) { return std::make_shared<ReluRouter>(o); }},
  };
  return table;
}

}  // namespace

const std::vector<std::string>& router_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& entry : router_table()) out.push_back(entry.first);
    return out;
  }();
  return names;
}

std::shared_ptr<Router> make_router(const std::string& name, const RouterOptions& options) {
  for (const auto& [known, factory] : router_table())
    if (known == name) return factory(options);
  fail("unknown moe.router '{}' (known: {})", name, fmt::join(router_names(), ", "));
}

}  // namespace moelab
