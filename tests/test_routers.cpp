// The routing family: the structural property that defines each router, its gradients, and the
// balancing losses and capacity rules that apply to any of them.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "grad_check.h"
#include "moelab/balance/balance_losses.h"
#include "moelab/dispatch/dispatch_plan.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/routing/balanced_assignment.h"
#include "moelab/routing/bias_balanced_router.h"
#include "moelab/routing/expert_choice_router.h"
#include "moelab/routing/hash_router.h"
#include "moelab/routing/hierarchical_router.h"
#include "moelab/routing/linear_gate_router.h"
#include "moelab/routing/group_limit.h"
#include "moelab/routing/noisy_topk_router.h"
#include "moelab/routing/relu_router.h"
#include "moelab/util/error.h"

using namespace moelab;

namespace {

// A router with random (not initial) gate weights, so logits are distinct.
std::shared_ptr<Router> random_router(const std::string& name, const RouterOptions& options) {
  auto router = make_router(name, options);
  torch::NoGradGuard no_grad;
  for (auto& p : router->parameters()) p.normal_(0, 1);
  return router;
}

torch::Tensor nonzeros_per_token(const Routing& routing) { return (dense_gates(routing) > 0).sum(1); }

torch::Tensor full_int(int64_t n, int64_t value) { return torch::full({n}, value, torch::kInt64); }

}  // namespace

TEST(Routers, TopKVariantsKeepExactlyKExperts) {
  torch::manual_seed(30);
  const auto x = torch::randn({50, 6});
  for (const char* name : {"topk", "topk_mask", "noisy_topk"}) {
    for (int64_t k : {1, 3}) {
      auto router = random_router(name, RouterOptions(6, 8, k));
      router->train();
      const auto routing = router->route(x);
      EXPECT_TRUE(torch::equal(nonzeros_per_token(routing), full_int(50, k))) << name << " k=" << k;
      EXPECT_EQ(routing.expert_index.sizes(), (std::vector<int64_t>{50, k})) << name;
    }
  }
}

TEST(Routers, NaiveTopKKeepsProbabilitiesAndMaskRenormalises) {
  torch::manual_seed(31);
  const auto x = torch::randn({40, 5});
  auto naive = random_router("topk", RouterOptions(5, 7, 3));
  auto masked = make_router("topk_mask", RouterOptions(5, 7, 3));
  {
    torch::NoGradGuard no_grad;
    masked->parameters()[0].copy_(naive->parameters()[0]);
  }
  const auto a = naive->route(x);
  const auto b = masked->route(x);
  const auto probs = torch::softmax(x.mm(naive->parameters()[0]), 1);
  const auto [top, index] = probs.topk(3, 1);
  EXPECT_TRUE(torch::equal(a.expert_index, index));
  EXPECT_TRUE(torch::allclose(a.gate_weight, top));
  EXPECT_TRUE((a.gate_weight.sum(1) < 1.0 - 1e-6).all().item<bool>());  // naive: sums below 1
  EXPECT_TRUE(torch::equal(b.expert_index, index));
  EXPECT_TRUE(torch::allclose(b.gate_weight.sum(1), torch::ones({40})));  // mask: renormalised
  EXPECT_TRUE(torch::allclose(b.gate_weight, top / top.sum(1, true)));
}

TEST(Routers, SoftmaxUsesEveryExpert) {
  torch::manual_seed(32);
  auto router = random_router("softmax", RouterOptions(4, 5, 1));
  const auto routing = router->route(torch::randn({20, 4}));
  EXPECT_TRUE(torch::equal(nonzeros_per_token(routing), full_int(20, 5)));
  EXPECT_TRUE(torch::allclose(dense_gates(routing).sum(1), torch::ones({20})));
}

TEST(Routers, SwitchPicksTheArgmaxScaledByItsProbability) {
  torch::manual_seed(33);
  auto router = random_router("switch", RouterOptions(6, 8, 1));
  const auto x = torch::randn({30, 6});
  const auto routing = router->route(x);
  const auto probs = torch::softmax(x.mm(router->parameters()[0]), 1);
  EXPECT_TRUE(torch::equal(routing.expert_index.squeeze(1), probs.argmax(1)));
  EXPECT_TRUE(torch::allclose(routing.gate_weight.squeeze(1), std::get<0>(probs.max(1))));
  EXPECT_THROW(make_router("switch", RouterOptions(6, 8, 2)), Error);
}

TEST(Routers, Top2RandomKeepsSecondExpertWithProbabilityTwiceItsWeight) {
  torch::manual_seed(34);
  auto router = random_router("top2_random", RouterOptions(4, 6, 2));
  // One token repeated: its g2 is fixed, so the kept fraction estimates min(1, 2 g2).
  const int64_t draws = 40000;
  const auto x = torch::randn({1, 4}).expand({draws, 4}).contiguous();
  router->train();
  const auto routing = router->route(x);
  const auto probs = torch::softmax(x.narrow(0, 0, 1).mm(router->parameters()[0]), 1);
  const auto top = std::get<0>(probs.topk(2, 1));
  const double g2 = (top[0][1] / top.sum()).item<double>();
  const double expected = std::min(1.0, 2.0 * g2);
  const double kept = (routing.expert_index.select(1, 1) >= 0).to(torch::kDouble).mean().item<double>();
  // Binomial standard error <= sqrt(0.25 / 40000) = 0.0025; allow 5 of them.
  EXPECT_NEAR(kept, expected, 0.0125) << "g2 = " << g2;
  // Both kept: g1 + g2 = 1. Second dropped: the first keeps g1 (GShard), not 1.
  const auto both = routing.expert_index.select(1, 1) >= 0;
  const double g1 = 1.0 - g2;
  EXPECT_TRUE(torch::allclose(routing.gate_weight.sum(1).masked_select(both), torch::ones({1}), 1e-5));
  EXPECT_TRUE(torch::allclose(routing.gate_weight.select(1, 0).masked_select(~both),
                              torch::full({1}, g1, torch::kFloat), 1e-5));
  // The first expert is always used; evaluation always uses both.
  EXPECT_TRUE((routing.expert_index.select(1, 0) >= 0).all().item<bool>());
  router->eval();
  EXPECT_TRUE((router->route(x).expert_index >= 0).all().item<bool>());
}

TEST(BalancedAssignment, EveryExpertGetsItsShareAndAffinityBeatsRandomBalancedAssignments) {
  torch::manual_seed(35);
  const int64_t n = 120, e = 6;
  const auto affinity = torch::randn({n, e}, torch::kDouble);
  const auto assignment = balanced_assignment(affinity);
  EXPECT_TRUE(torch::equal(torch::bincount(assignment, {}, e), torch::full({e}, n / e, torch::kInt64)));
  const double total = affinity.gather(1, assignment.unsqueeze(1)).sum().item<double>();
  std::vector<int64_t> balanced(n);
  for (int64_t i = 0; i < n; ++i) balanced[i] = i % e;
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::shuffle(balanced.begin(), balanced.end(), rng);
    const auto random = torch::tensor(balanced, torch::kInt64);
    EXPECT_GT(total, affinity.gather(1, random.unsqueeze(1)).sum().item<double>());
  }
  // Unequal shares when E does not divide N: two experts get 3, two get 2, and which ones varies.
  std::set<int64_t> experts_with_three;
  for (int trial = 0; trial < 20; ++trial) {
    const auto counts = torch::bincount(balanced_assignment(torch::randn({10, 4})), {}, 4);
    EXPECT_TRUE(torch::equal(std::get<0>(counts.sort()), torch::tensor({2, 2, 3, 3}, torch::kInt64)));
    for (int64_t e = 0; e < 4; ++e)
      if (counts[e].item<int64_t>() == 3) experts_with_three.insert(e);
  }
  EXPECT_EQ(experts_with_three.size(), 4u);
  EXPECT_THROW(balanced_assignment(torch::tensor({0.0, std::nan(""), 1.0, 2.0}).view({2, 2})), Error);
}

// The best total affinity over every assignment giving each expert exactly n / e tokens.
double brute_force_balanced_optimum(const torch::Tensor& affinity) {
  const int64_t n = affinity.size(0), e = affinity.size(1);
  const auto a = affinity.accessor<double, 2>();
  std::vector<int64_t> choice(n, 0);
  double best = -1e300;
  while (true) {
    std::vector<int64_t> counts(e, 0);
    double total = 0;
    for (int64_t i = 0; i < n; ++i) {
      ++counts[choice[i]];
      total += a[i][choice[i]];
    }
    if (std::all_of(counts.begin(), counts.end(), [&](int64_t c) { return c == n / e; })) best = std::max(best, total);
    int64_t i = 0;  // next choice vector, counting in base e
    while (i < n && ++choice[i] == e) choice[i++] = 0;
    if (i == n) return best;
  }
}

TEST(BalancedAssignment, MatchesBruteForceOptimumOnSmallProblems) {
  torch::manual_seed(36);
  for (auto [n, e] : std::vector<std::pair<int64_t, int64_t>>{{8, 2}, {6, 3}, {8, 4}}) {
    for (int trial = 0; trial < 10; ++trial) {
      const auto affinity = torch::randn({n, e}, torch::kDouble);
      const auto assignment = balanced_assignment(affinity);
      const double total = affinity.gather(1, assignment.unsqueeze(1)).sum().item<double>();
      EXPECT_NEAR(total, brute_force_balanced_optimum(affinity), 1e-4) << n << " tokens, " << e << " experts";
    }
  }
}

TEST(Routers, BaseIsBalancedInTrainingAndGreedyInEvaluation) {
  torch::manual_seed(37);
  auto router = random_router("base", RouterOptions(5, 4, 1));
  const auto x = torch::randn({64, 5});
  router->train();
  const auto routing = router->route(x);
  EXPECT_TRUE(torch::equal(slot_counts(routing.expert_index, 4), torch::full({4}, 16.0f)));
  router->eval();
  const auto greedy = router->route(x);
  EXPECT_TRUE(torch::equal(greedy.expert_index.squeeze(1), x.mm(router->parameters()[0]).argmax(1)));
}

TEST(Routers, ExpertChoiceFillsEveryExpertExactly) {
  torch::manual_seed(38);
  for (double cf : {0.5, 1.0, 2.0}) {
    auto router = random_router("expert_choice", RouterOptions(6, 8, 2).capacity_factor(cf));
    const auto routing = router->route(torch::randn({40, 6}));
    const int64_t c = std::dynamic_pointer_cast<ExpertChoiceRouter>(router)->tokens_per_expert(40);
    EXPECT_EQ(c, static_cast<int64_t>(std::ceil(cf * 40 * 2 / 8)));
    EXPECT_TRUE(torch::equal(slot_counts(routing.expert_index, 8), torch::full({8}, static_cast<float>(c))));
    // Tokens get anywhere from 0 to E experts, and no dispatch capacity drops any of them.
    const auto plan = make_dispatch_plan(routing, 8, 0.0);
    EXPECT_EQ(plan.num_assignments, 8 * c);
    EXPECT_EQ(plan.num_dropped, 0);
  }
  EXPECT_THROW(make_router("expert_choice", RouterOptions(6, 8, 2).capacity_factor(0.0)), Error);
}

TEST(Routers, HashIsAFixedFunctionOfTheTokenId) {
  auto router = make_router("hash", RouterOptions(4, 8, 1));
  const auto ids = torch::tensor({5, 9, 5, 1000, 9}, torch::kInt64);
  const auto a = router->route(torch::randn({5, 4}), ids);
  const auto b = router->route(torch::randn({5, 4}), ids);  // different features, same ids
  EXPECT_TRUE(torch::equal(a.expert_index, b.expert_index));
  EXPECT_EQ(a.expert_index[0][0].item<int64_t>(), a.expert_index[2][0].item<int64_t>());
  EXPECT_EQ(a.expert_index[3][0].item<int64_t>(), hash_expert(1000, 8));
  // Over many ids the hash spreads evenly.
  const auto many = make_router("hash", RouterOptions(4, 8, 1))
                        ->route(torch::zeros({8000, 4}), torch::arange(8000, torch::kInt64));
  const auto counts = slot_counts(many.expert_index, 8);
  EXPECT_LT((counts.max() / counts.mean()).item<double>(), 1.1);
  EXPECT_THROW(router->route(torch::randn({5, 4})), Error);  // no token ids
}

TEST(Routers, HierarchicalPicksGroupKGroupsTimesKExperts) {
  torch::manual_seed(39);
  // 12 experts in 3 groups of 4; 2 groups per token, 2 experts in each.
  auto router = random_router("hierarchical", RouterOptions(5, 12, 2).groups(3).group_k(2));
  router->train();
  const auto routing = router->route(torch::randn({30, 5}));
  EXPECT_EQ(routing.expert_index.size(1), 4);
  EXPECT_TRUE(torch::equal(nonzeros_per_token(routing), full_int(30, 4)));
  EXPECT_TRUE(torch::allclose(routing.gate_weight.sum(1), torch::ones({30})));
  const auto group = routing.expert_index.div(4, "floor");  // [30, 4]
  for (int64_t t = 0; t < 30; ++t) {
    const auto groups = group[t].contiguous();
    const auto* g = groups.data_ptr<int64_t>();
    EXPECT_EQ(std::set<int64_t>(g, g + 4).size(), 2u) << "token " << t;
    EXPECT_EQ(g[0], g[1]) << "slots 0 and 1 belong to the first chosen group";
    EXPECT_EQ(g[2], g[3]);
  }
  EXPECT_TRUE(routing.smooth_load.defined());
  EXPECT_NEAR(routing.smooth_load.sum().item<double>(), 30.0 * 4.0, 30.0 * 4.0 * 0.5);
  EXPECT_THROW(make_router("hierarchical", RouterOptions(5, 12, 2).groups(5)), Error);  // 5 does not divide 12
  EXPECT_THROW(make_router("hierarchical", RouterOptions(5, 12, 5).groups(3)), Error);  // k > 4 per group
}

namespace {

// The hierarchical gate computed the obvious way: every group's secondary logits for every token,
// then the chosen groups' rows gathered. Draws its noise in the same order as the router.
Routing dense_hierarchical_routing(const HierarchicalRouter& r, const torch::Tensor& x, bool noisy) {
  const int64_t n = x.size(0), g = r.options.groups(), m = r.experts_per_group(), k1 = r.options.group_k();
  const double eps = r.options.noise_epsilon();
  const auto primary_logits = x.mm(r.primary_gate);
  const auto primary = noisy_top_k_gate(
      primary_logits, noisy ? noise_scale(x, r.primary_noise, eps) : torch::Tensor(), k1);
  auto chosen_rows = [&](const torch::Tensor& w) {  // [G, D, M] -> [N*K1, M]
    std::vector<torch::Tensor> per_group;
    for (int64_t group = 0; group < g; ++group) per_group.push_back(x.mm(w[group]));
    return torch::stack(per_group, 1)
        .gather(1, primary.expert_index.unsqueeze(2).expand({n, k1, m}))
        .reshape({n * k1, m});
  };
  const auto secondary = noisy_top_k_gate(
      chosen_rows(r.secondary_gate), noisy ? noise_std_from_logits(chosen_rows(r.secondary_noise), eps) : torch::Tensor(),
      r.options.k());
  const auto index = (secondary.expert_index + primary.expert_index.reshape({n * k1, 1}) * m).reshape({n, -1});
  const auto weight = (secondary.gate_weight * primary.gate_weight.reshape({n * k1, 1})).reshape({n, -1});
  return routing_from_slots(index, weight, r.options.num_experts());
}

}  // namespace

TEST(Routers, HierarchicalGroupedSecondaryGatesMatchTheDenseComputation) {
  // 24 experts in 4 groups of 6; 2 groups per token, 2 experts in each. The router computes the
  // secondary gates only for chosen groups (grouped product); the oracle computes all of them.
  for (const bool training : {false, true}) {
    SCOPED_TRACE(training ? "training (noisy)" : "evaluation");
    torch::manual_seed(47);
    auto base = random_router("hierarchical", RouterOptions(5, 24, 2).groups(4).group_k(2));
    auto router = std::dynamic_pointer_cast<HierarchicalRouter>(base);
    router->train(training);
    const auto x = torch::randn({40, 5});
    const auto upstream = torch::randn({40, 4});
    torch::manual_seed(48);
    const auto fast = router->route(x);
    (fast.gate_weight * upstream).sum().backward();
    std::vector<torch::Tensor> fast_grads;
    for (const auto& p : router->parameters()) fast_grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    router->zero_grad(/*set_to_none=*/true);

    torch::manual_seed(48);
    const auto dense = dense_hierarchical_routing(*router, x, training);
    (dense.gate_weight * upstream).sum().backward();
    EXPECT_TRUE(torch::equal(fast.expert_index, dense.expert_index));
    EXPECT_TRUE(torch::allclose(fast.gate_weight, dense.gate_weight, 1e-5, 1e-6));
    const auto params = router->parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      if (!training && (i == 1 || i == 3)) continue;  // the noise weights get no gradient in evaluation
      ASSERT_TRUE(fast_grads[i].defined()) << "parameter " << i;
      EXPECT_TRUE(torch::allclose(fast_grads[i], params[i].grad(), 1e-4, 1e-5)) << "parameter " << i;
      EXPECT_GT(fast_grads[i].abs().sum().item<double>(), 0.0) << "parameter " << i;
    }
    // No [N, E] tensors unless the z or switch loss asks for them.
    EXPECT_FALSE(fast.logits.defined());
  }
  auto with_z = make_router("hierarchical", RouterOptions(5, 24, 2).groups(4).group_k(2).balance(BalanceWeights{0, 0, 0, 0.01}));
  EXPECT_EQ(with_z->route(torch::randn({7, 5})).logits.sizes(), (std::vector<int64_t>{7, 24}));
}

TEST(Routing, ExpertImportanceIsTheColumnSumOfTheDenseGates) {
  const auto index = torch::tensor(std::vector<int64_t>{0, kNoExpert, 2, 0, 1, 2}).view({3, 2});
  const auto weight = torch::tensor({{0.7f, 0.0f}, {0.6f, 0.4f}, {0.5f, 0.5f}}).requires_grad_(true);
  const auto routing = routing_from_slots(index, weight, 4);
  const auto gates = dense_gates(routing);
  EXPECT_TRUE(torch::allclose(gates, torch::tensor({{0.7f, 0.0f, 0.0f, 0.0f}, {0.4f, 0.0f, 0.6f, 0.0f},
                                                    {0.0f, 0.5f, 0.5f, 0.0f}})));
  EXPECT_TRUE(torch::allclose(expert_importance(routing), torch::tensor({1.1f, 0.5f, 1.1f, 0.0f})));
  expert_importance(routing).select(0, 2).backward();  // expert 2's weight flows back to its slots only
  EXPECT_TRUE(torch::equal(weight.grad(), torch::tensor({{0.0f, 0.0f}, {1.0f, 0.0f}, {0.0f, 1.0f}})));
}

TEST(Routers, HierarchicalLoadLossHasGradientEvenWithOneGroup) {
  // G = 1 (every token goes to the one group): the primary load is exact, the secondary smooth.
  torch::manual_seed(43);
  auto router = random_router("hierarchical", RouterOptions(4, 6, 2).groups(1).group_k(1));
  router->train();
  const auto routing = router->route(torch::randn({20, 4}));
  ASSERT_TRUE(routing.smooth_load.defined());
  balance_losses(routing, BalanceWeights{0.0, 1.0, 0.0, 0.0}).aux_loss.backward();
  const auto noise = std::dynamic_pointer_cast<HierarchicalRouter>(router)->secondary_noise;
  EXPECT_GT(noise.grad().abs().sum().item<double>(), 0.0);
}

TEST(Routers, EdgeCasesOneExpertKEqualsEAndEmptyBatch) {
  torch::manual_seed(44);
  for (const char* name : {"topk", "topk_mask", "noisy_topk", "softmax"}) {
    for (int64_t experts : {1, 3}) {
      SCOPED_TRACE(std::string(name) + " E=" + std::to_string(experts));
      const bool noisy = std::string(name) == "noisy_topk";
      MoELayer moe(MoELayerOptions(4, experts, experts, 6)
                       .router(name)
                       .balance(BalanceWeights{0.1, noisy ? 0.1 : 0.0, 0.01, 0.001}));
      moe->train();
      auto x = torch::randn({10, 4}).requires_grad_(true);
      const auto out = moe(x);
      EXPECT_TRUE(torch::isfinite(out.output).all().item<bool>());
      EXPECT_TRUE(std::isfinite(out.aux_loss.item<double>()));
      (out.output.sum() + out.aux_loss).backward();
      EXPECT_TRUE(torch::isfinite(x.grad()).all().item<bool>());
      // An empty batch gives an empty output and a zero (not NaN) auxiliary loss.
      const auto empty = moe(torch::zeros({0, 4}));
      EXPECT_EQ(empty.output.size(0), 0);
      EXPECT_EQ(empty.aux_loss.item<double>(), 0.0);
    }
  }
}

TEST(Routers, UnknownNameListsTheKnownOnes) {
  try {
    make_router("top3", RouterOptions(4, 4, 1));
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const auto& name : router_names()) EXPECT_NE(message.find(name), std::string::npos) << name;
  }
  EXPECT_THROW(make_router("topk", RouterOptions(4, 4, 5)), Error);
}

TEST(Routers, ReducedPrecisionInputRoutesInFloat32) {
  torch::manual_seed(40);
  auto router = random_router("topk_mask", RouterOptions(4, 6, 2));
  const auto routing = router->route(torch::randn({10, 4}).to(torch::kBFloat16));
  EXPECT_EQ(routing.logits.scalar_type(), torch::kFloat);
  EXPECT_EQ(routing.gate_weight.scalar_type(), torch::kFloat);
}

TEST(BalanceLosses, ZLossAndSwitchLossOnHandWorkedCases) {
  // logits [0, 0] -> logsumexp = log 2; [log 3, 0] -> log 4. Mean of squares.
  const auto logits = torch::tensor({{0.0, 0.0}, {std::log(3.0), 0.0}}, torch::kDouble);
  const double expected_z = (std::pow(std::log(2.0), 2) + std::pow(std::log(4.0), 2)) / 2;
  EXPECT_NEAR(z_loss(logits).item<double>(), expected_z, 1e-12);
  // probs rows [0.5, 0.5], [0.75, 0.25] -> P = [0.625, 0.375]; assigned [1, 1] -> f = [0.5, 0.5].
  const auto probs = torch::softmax(logits, 1);
  EXPECT_NEAR(switch_loss(probs, torch::tensor({1.0, 1.0})).item<double>(), 2 * (0.5 * 0.625 + 0.5 * 0.375), 1e-12);
  // All tokens on expert 0: 2 * (1 * 0.625) = 1.25.
  EXPECT_NEAR(switch_loss(probs, torch::tensor({2.0, 0.0})).item<double>(), 1.25, 1e-12);
  // Perfect balance gives exactly 1.
  const auto uniform = torch::full({4, 4}, 0.25, torch::kDouble);
  EXPECT_NEAR(switch_loss(uniform, torch::tensor({1.0, 1.0, 1.0, 1.0})).item<double>(), 1.0, 1e-12);
}

TEST(BalanceLosses, GradientsOfEveryDifferentiableGateAndLossMatchFiniteDifferences) {
  const BalanceWeights all{0.7, 0.0, 0.5, 0.3};  // load is checked with the noisy routers below
  const BalanceWeights noisy_all{0.7, 0.9, 0.5, 0.3};
  struct Case {
    const char* name;
    RouterOptions options;
    BalanceWeights weights;
  };
  const std::vector<Case> cases = {
      {"softmax", RouterOptions(4, 5, 1), all},
      {"topk", RouterOptions(4, 5, 2), all},
      {"topk_mask", RouterOptions(4, 5, 2), all},
      {"noisy_topk", RouterOptions(4, 5, 2), noisy_all},
      {"switch", RouterOptions(4, 5, 1), all},
      {"top2_random", RouterOptions(4, 5, 2), all},
      {"base", RouterOptions(4, 4, 1), all},
      {"expert_choice", RouterOptions(4, 5, 2).capacity_factor(1.0), all},
      {"hierarchical", RouterOptions(4, 6, 2).groups(2).group_k(1).balance(noisy_all), noisy_all},
      {"aux_free", RouterOptions(4, 5, 2).route_scale(1.5), all},
      {"aux_free", RouterOptions(4, 5, 3).affinity("softmax"), all},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    torch::manual_seed(41);
    auto router = random_router(c.name, c.options);
    router->to(torch::kDouble);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : router->parameters()) p.mul_(0.5);
    }
    router->train();
    auto x = torch::randn({12, 4}, torch::kDouble).requires_grad_(true);
    const auto probe = torch::randn({12, router->num_slots()}, torch::kDouble);
    auto loss = [&] {
      torch::manual_seed(99);  // the same noise and random choices at every evaluation
      const auto routing = router->route(x);
      return (routing.gate_weight * probe).sum() + balance_losses(routing, c.weights).aux_loss;
    };
    std::vector<std::pair<std::string, torch::Tensor>> inputs = {{"x", x}};
    for (const auto& item : router->named_parameters()) inputs.push_back({item.key(), item.value()});
    moelab::testing::expect_gradients_match(loss, inputs);
  }
}

TEST(Capacity, ConstructedOverflowDropsTheExactCount) {
  // 6 tokens, 2 experts, k = 1; all go to expert 0 except token 5. cf = 1 -> C = ceil(6/2) = 3:
  // expert 0 keeps 3 of its 5, so 2 are dropped.
  const auto index = torch::tensor({0, 0, 0, 0, 0, 1}, torch::kInt64).unsqueeze(1);
  const auto weight = torch::tensor({0.1f, 0.9f, 0.2f, 0.8f, 0.3f, 1.0f}).unsqueeze(1);
  const auto routing = routing_from_slots(index, weight, 2);
  const auto by_position = make_dispatch_plan(routing, 2, 1.0, DropPolicy::kPosition);
  EXPECT_EQ(by_position.capacity, 3);
  EXPECT_EQ(by_position.num_dropped, 2);
  EXPECT_TRUE(torch::equal(by_position.token_index, torch::tensor({0, 1, 2, 5}, torch::kInt64)));
  const auto by_weight = make_dispatch_plan(routing, 2, 1.0, DropPolicy::kWeight);
  EXPECT_EQ(by_weight.num_dropped, 2);
  EXPECT_TRUE(torch::equal(by_weight.token_index, torch::tensor({1, 3, 4, 5}, torch::kInt64)));
  EXPECT_EQ(make_dispatch_plan(routing, 2, 0.0).num_dropped, 0);  // dropless
  EXPECT_THROW(parse_drop_policy("random"), Error);
}

TEST(Capacity, EmptySlotsAreSkipped) {
  const auto index = torch::tensor(std::vector<int64_t>{0, kNoExpert, 1, 0}).view({2, 2});
  const auto weight = torch::tensor({{1.0f, 0.0f}, {0.6f, 0.4f}});
  const auto plan = make_dispatch_plan(routing_from_slots(index, weight, 2), 2, 0.0);
  EXPECT_EQ(plan.num_assignments, 3);
  EXPECT_EQ(plan.rows_per_expert, (std::vector<int64_t>{2, 1}));
  EXPECT_TRUE(torch::equal(plan.token_index, torch::tensor({0, 1, 1}, torch::kInt64)));
}

TEST(MoELayerRouting, LoadLossNeedsNoisyGatesAndLogitLossesNeedLogits) {
  auto options = MoELayerOptions(4, 4, 2, 8).router("topk_mask");
  EXPECT_THROW(MoELayer(options.balance(BalanceWeights{0.1, 0.1, 0, 0})), Error);
  EXPECT_NO_THROW(MoELayer(options.balance(BalanceWeights{0.1, 0.0, 0.01, 0.001})));
  auto hash = MoELayerOptions(4, 4, 1, 8).router("hash");
  EXPECT_THROW(MoELayer(hash.balance(BalanceWeights{0, 0, 0.01, 0})), Error);
  EXPECT_NO_THROW(MoELayer(hash.balance(BalanceWeights{})));
}

TEST(MoELayerRouting, EvalCapacityFactorAppliesOnlyInEvaluation) {
  torch::manual_seed(42);
  MoELayer moe(MoELayerOptions(4, 4, 1, 8)
                   .router("switch")
                   .balance(BalanceWeights{})
                   .capacity_factor(0.5)
                   .eval_capacity_factor(0.0));
  const auto x = torch::randn({64, 4});
  moe->train();
  EXPECT_GT(moe(x).stats.num_dropped, 0);  // C = 8 of 64 tokens over 4 experts: something overflows
  moe->eval();
  EXPECT_EQ(moe(x).stats.num_dropped, 0);
}

// Aux-loss-free balancing (issue 19 item 1).
TEST(AuxFreeRouter, BiasesMoveBySignTowardsTheMeanLoadAndStayOutOfTheOptimizer) {
  auto router = std::make_shared<BiasBalancedRouter>(RouterOptions(3, 4, 2).bias_update_rate(0.1), true);
  EXPECT_EQ(router->parameters().size(), 1u);  // w_gate only: the bias is a buffer
  ASSERT_EQ(router->named_buffers().size(), 1u);
  EXPECT_EQ(router->named_buffers().begin()->key(), "expert_bias");
  // Loads 5, 1, 3, 3: mean 3, so expert 0 is over-loaded, expert 1 under-loaded, 2 and 3 at the mean.
  router->after_step(torch::tensor({5.0, 1.0, 3.0, 3.0}, torch::kDouble), 6);
  EXPECT_TRUE(torch::allclose(router->expert_bias, torch::tensor({-0.1f, 0.1f, 0.0f, 0.0f})));
  router->after_step(torch::tensor({2, 0, 9, 1}, torch::kInt64), 11);  // mean 3
  EXPECT_TRUE(torch::allclose(router->expert_bias, torch::tensor({0.0f, 0.2f, -0.1f, 0.1f})));
  EXPECT_THROW(router->after_step(torch::ones({3}), 1), moelab::Error);  // another layer's load
  auto still = std::make_shared<BiasBalancedRouter>(RouterOptions(3, 4, 2).bias_update_rate(0), true);
  still->after_step(torch::tensor({5.0, 1.0, 3.0, 3.0}), 6);
  EXPECT_TRUE(torch::equal(still->expert_bias, torch::zeros({4})));
  EXPECT_THROW(make_router("aux_free", RouterOptions(3, 4, 2).affinity("relu")), moelab::Error);
  EXPECT_THROW(make_router("aux_free", RouterOptions(3, 4, 5)), moelab::Error);  // k > E
}

TEST(AuxFreeRouter, TheBiasChangesTheChoiceButNeverTheGateValues) {
  torch::manual_seed(50);
  for (const char* affinity : {"sigmoid", "softmax"}) {
    SCOPED_TRACE(affinity);
    auto router = std::dynamic_pointer_cast<BiasBalancedRouter>(
        random_router("aux_free", RouterOptions(6, 5, 2).affinity(affinity).route_scale(2.0)));
    router->to(torch::kDouble);
    const auto x = torch::randn({30, 6}, torch::kDouble);
    const auto logits = torch::matmul(x, router->w_gate);
    const auto scores = std::string(affinity) == "sigmoid" ? torch::sigmoid(logits) : torch::softmax(logits, 1);
    // Without bias: the top-2 of the affinities, weights = their share of the two, times 2.
    const auto plain = router->route(x);
    const auto plain_top = scores.topk(2, 1);
    EXPECT_TRUE(torch::equal(std::get<1>(plain_top), plain.expert_index));
    EXPECT_TRUE(torch::allclose(plain.gate_weight,
                                2.0 * std::get<0>(plain_top) / std::get<0>(plain_top).sum(1, true)));
    // A bias of +10 on expert 4 puts it into every token's choice; the gate values are still the
    // unbiased affinities of whichever experts were chosen.
    {
      torch::NoGradGuard no_grad;
      router->expert_bias.zero_()[4] = 10.0;
    }
    const auto biased = router->route(x);
    EXPECT_TRUE((biased.expert_index == 4).any(1).all().item<bool>());
    EXPECT_FALSE(torch::equal(biased.expert_index, plain.expert_index));
    const auto picked = scores.gather(1, biased.expert_index);
    EXPECT_TRUE(torch::allclose(biased.gate_weight, 2.0 * picked / picked.sum(1, true)));
    // Gradients equal those of the unbiased gate on the same choice: the bias is not in the graph.
    auto w = router->w_gate.detach().clone().requires_grad_(true);
    auto chosen_scores = [&](const torch::Tensor& weight) {
      const auto l = torch::matmul(x, weight);
      const auto s = std::string(affinity) == "sigmoid" ? torch::sigmoid(l) : torch::softmax(l, 1);
      const auto p = s.gather(1, biased.expert_index);
      return 2.0 * p / p.sum(1, true);
    };
    const auto probe = torch::randn({30, 2}, torch::kDouble);
    const auto want = torch::autograd::grad({(chosen_scores(w) * probe).sum()}, {w})[0];
    router->zero_grad();
    (router->route(x).gate_weight * probe).sum().backward();
    EXPECT_TRUE(torch::allclose(router->w_gate.grad(), want));
    EXPECT_FALSE(router->expert_bias.requires_grad());
  }
}

// Group-limited routing (issue 19 item 4).
TEST(GroupLimitedRouting, NeverPicksAnExpertOutsideTheKeptGroups) {
  torch::manual_seed(51);
  const int64_t experts = 12, groups = 4, group_k = 2, k = 3, per_group = experts / groups;
  for (const char* name : {"group_limited", "aux_free"}) {
    SCOPED_TRACE(name);
    auto router = std::dynamic_pointer_cast<BiasBalancedRouter>(
        random_router(name, RouterOptions(6, experts, k).groups(groups).group_k(group_k)));
    {
      torch::NoGradGuard no_grad;
      if (std::string(name) == "aux_free") router->expert_bias.normal_(0, 0.3);  // the choice reads s + b
    }
    const auto x = torch::randn({200, 6});
    const auto routing = router->route(x);
    const auto score = (torch::sigmoid(x.mm(router->w_gate)) + router->expert_bias).contiguous();
    for (int64_t t = 0; t < x.size(0); ++t) {
      // The slow way: each group's two best scores summed, the group_k best groups kept.
      std::vector<std::pair<double, int64_t>> group_scores;
      for (int64_t g = 0; g < groups; ++g) {
        std::vector<double> members;
        for (int64_t m = 0; m < per_group; ++m) members.push_back(score[t][g * per_group + m].item<double>());
        std::sort(members.rbegin(), members.rend());
        group_scores.emplace_back(members[0] + members[1], g);
      }
      std::sort(group_scores.rbegin(), group_scores.rend());
      std::set<int64_t> kept;
      for (int64_t i = 0; i < group_k; ++i) kept.insert(group_scores[i].second);
      // And the k best experts inside them.
      std::vector<std::pair<double, int64_t>> candidates;
      for (int64_t e = 0; e < experts; ++e)
        if (kept.count(e / per_group)) candidates.emplace_back(score[t][e].item<double>(), e);
      std::sort(candidates.rbegin(), candidates.rend());
      std::set<int64_t> want, got;
      for (int64_t i = 0; i < k; ++i) want.insert(candidates[i].second);
      for (int64_t i = 0; i < k; ++i) {
        const int64_t e = routing.expert_index[t][i].item<int64_t>();
        got.insert(e);
        ASSERT_TRUE(kept.count(e / per_group)) << "token " << t << " got expert " << e << " outside its groups";
      }
      ASSERT_EQ(got, want) << "token " << t;
    }
    // The gates are still the chosen (unbiased) affinities renormalised.
    const auto picked = torch::sigmoid(x.mm(router->w_gate)).gather(1, routing.expert_index);
    EXPECT_TRUE(torch::allclose(routing.gate_weight, picked / picked.sum(1, true), 1e-5, 1e-6));
  }
  // Every group kept: the limit changes nothing.
  torch::manual_seed(52);
  auto all_groups = random_router("group_limited", RouterOptions(6, experts, k).groups(groups).group_k(groups));
  const auto x = torch::randn({40, 6});
  EXPECT_TRUE(torch::equal(std::get<1>(torch::sigmoid(x.mm(std::dynamic_pointer_cast<BiasBalancedRouter>(all_groups)->w_gate))
                                           .topk(k, 1)),
                           all_groups->route(x).expert_index));
  EXPECT_THROW(make_router("group_limited", RouterOptions(6, experts, k)), moelab::Error);  // one group
  EXPECT_THROW(make_router("group_limited", RouterOptions(6, experts, 4).groups(4).group_k(1)), moelab::Error);  // k > 3
  EXPECT_THROW(make_router("group_limited", RouterOptions(6, experts, 2).groups(5)), moelab::Error);  // 5 does not divide 12
  EXPECT_THROW(make_router("group_limited", RouterOptions(6, experts, 2).groups(4).group_k(5)), moelab::Error);
}

// ReLU routing (issue 19 item 5).
TEST(ReluRouter, GatesAreTheReluOfTheLogitsWithAnExpertPerPositiveLogit) {
  torch::manual_seed(53);
  auto router = std::dynamic_pointer_cast<ReluRouter>(random_router("relu", RouterOptions(5, 6, 2)));
  const auto x = torch::randn({40, 5});
  const auto routing = router->route(x);
  const auto logits = x.mm(router->w_gate);
  EXPECT_EQ(routing.expert_index.size(1), 6);
  EXPECT_TRUE(torch::allclose(dense_gates(routing), torch::relu(logits)));
  EXPECT_TRUE(torch::equal(routing.expert_index >= 0, logits > 0));
  EXPECT_TRUE(torch::equal(nonzeros_per_token(routing), (logits > 0).sum(1)));
  // The penalty: lambda * sum_e f_e mean_t gate, f_e = E / (k N) * tokens on e.
  const auto frequency = (logits > 0).to(torch::kFloat).sum(0) * (6.0 / (2.0 * 40.0));
  const auto l1 = (torch::relu(logits).mean(0) * frequency).sum();
  EXPECT_NEAR(routing.loss_terms.at("relu_l1").item<double>(), l1.item<double>(), 1e-5);
  EXPECT_NEAR(routing.router_loss.item<double>(), 1e-8 * l1.item<double>(), 1e-12);
  EXPECT_FALSE(router->takes_capacity());  // dropless only
  EXPECT_THROW(MoELayer(MoELayerOptions(5, 6, 2, 8).router("relu").balance(BalanceWeights{}).capacity_factor(1.0)),
               moelab::Error);
  EXPECT_THROW(make_router("relu", RouterOptions(5, 6, 7)), moelab::Error);
}

TEST(ReluRouter, TheL1CoefficientRisesWithTooManyActiveExpertsAndFallsWithTooFew) {
  auto router = std::dynamic_pointer_cast<ReluRouter>(make_router("relu", RouterOptions(5, 4, 2).l1_init(1e-3).l1_rate(2.0)));
  const auto lambda = [&] { return router->l1_coefficient.item<double>(); };
  router->after_step(torch::tensor({10.0, 10.0, 5.0, 5.0}, torch::kDouble), 10);  // 3 per token > k = 2
  EXPECT_DOUBLE_EQ(lambda(), 2e-3);
  router->after_step(torch::tensor({5, 5, 0, 0}, torch::kInt64), 10);  // 1 per token < 2
  router->after_step(torch::tensor({5, 5, 0, 0}, torch::kInt64), 10);
  EXPECT_DOUBLE_EQ(lambda(), 0.5e-3);
  router->after_step(torch::tensor({5.0, 5.0, 5.0, 5.0}, torch::kDouble), 10);  // exactly 2: unchanged
  EXPECT_DOUBLE_EQ(lambda(), 0.5e-3);
  EXPECT_EQ(router->parameters().size(), 1u);  // lambda is a buffer, out of the optimizer
  EXPECT_THROW(router->after_step(torch::ones({3}), 1), moelab::Error);
}

TEST(ReluRouter, GateAndPenaltyGradientsMatchFiniteDifferences) {
  torch::manual_seed(54);
  auto router = std::dynamic_pointer_cast<ReluRouter>(random_router("relu", RouterOptions(4, 5, 2).l1_init(0.3)));
  router->to(torch::kDouble);
  auto x = torch::randn({12, 4}, torch::kDouble).requires_grad_(true);
  const auto probe = torch::randn({12, 5}, torch::kDouble);
  // A probe of the gates plus the penalty: both pieces the router differentiates.
  moelab::testing::expect_gradients_match(
      [&] {
        const auto routing = router->route(x);
        return (routing.gate_weight * probe).sum() + routing.router_loss;
      },
      {{"x", x}, {"w_gate", router->w_gate}});
}

// Null experts (issue 19 item 6).
TEST(NullExperts, SlotsOnNullExpertsCostNothingAndAddZero) {
  torch::manual_seed(55);
  const int64_t d = 4, experts = 3, nulls = 3, k = 2;
  MoELayer moe(MoELayerOptions(d, experts, k, 8).router("topk_mask").null_experts(nulls).balance(BalanceWeights{}));
  auto router = std::dynamic_pointer_cast<LinearGateRouter>(moe->router);
  ASSERT_EQ(router->num_experts(), experts + nulls);
  moe->eval();
  const auto x = torch::randn({64, d});
  const auto out = moe(x);
  // The slow twin: every real expert on every token, weighted by its column of the dense gates;
  // the null experts' columns are simply not there.
  const auto gates = dense_gates(moe->router->route(x));  // [N, E + n]
  auto want = torch::zeros({64, d});
  for (int64_t e = 0; e < experts; ++e) {
    Routing all_to_e = routing_from_slots(torch::full({64, 1}, e, torch::kInt64), torch::ones({64, 1}), experts);
    const auto plan = make_dispatch_plan(all_to_e, experts, 0.0);
    want += gates.narrow(1, e, 1) * combine_rows(moe->experts->forward(x, plan), plan);
  }
  EXPECT_TRUE(torch::allclose(out.output, want, 1e-5, 1e-6));
  // Some tokens used fewer than k real experts, and the statistics count only real ones.
  const auto real_slots = (gates.narrow(1, 0, experts) > 0).sum();
  EXPECT_LT(real_slots.item<int64_t>(), 64 * k);
  EXPECT_GT(real_slots.item<int64_t>(), 0);
  EXPECT_EQ(out.stats.num_assignments, real_slots.item<int64_t>());
  EXPECT_EQ(out.stats.assigned.numel(), experts);
  // A token sent only to null experts gets exactly zero and costs the router alone.
  {
    torch::NoGradGuard no_grad;
    router->w_gate.zero_();
    router->w_gate.narrow(1, experts, nulls).fill_(1.0);
  }
  const auto nothing = moe(torch::rand({8, d}) + 0.5);
  EXPECT_TRUE(torch::equal(nothing.output, torch::zeros({8, d})));
  EXPECT_EQ(nothing.stats.num_assignments, 0);
  EXPECT_EQ(moe->flops_per_token_at(0.0), router->flops_per_token());
  EXPECT_EQ(moe->flops_per_token_at(2.0), moe->flops_per_token());
  EXPECT_THROW(MoELayer(MoELayerOptions(d, experts, k, 8).null_experts(-1)), moelab::Error);
}

// Batch-prioritised routing (issue 19 item 8), on a hand-worked case: 4 tokens, 2 experts, k = 2,
// capacity ceil(0.5 * 4 * 2 / 2) = 2 rows per expert.
//   token 0: experts (0, 1) weights (0.6, 0.4)      priority 0.6
//   token 1: experts (0, 1) weights (0.9, 0.1)      priority 0.9
//   token 2: experts (1, 0) weights (0.7, 0.3)      priority 0.7
//   token 3: experts (0, 1) weights (0.8, 0.2)      priority 0.8
// priority: first choices in the order 1, 3, 2, 0, then second choices in that order:
//   expert 0 sees t1, t3, t0 (first choices), t2 (second) -> keeps t1, t3
//   expert 1 sees t2 (first), t1, t3, t0 (second)         -> keeps t2, t1
// weight: each expert's slots by their own weight: expert 1 sees t2 .7, t0 .4, t3 .2, t1 .1 -> t2, t0
// position: first choices in token order: expert 0 keeps t0, t1; expert 1 keeps t2, then t0 (second).
TEST(DispatchPlan, BatchPrioritisedRoutingServesTokensByTheirLargestGate) {
  Routing routing = routing_from_slots(torch::tensor({0, 1, 0, 1, 1, 0, 0, 1}, torch::kInt64).reshape({4, 2}),
                                       torch::tensor({0.6f, 0.4f, 0.9f, 0.1f, 0.7f, 0.3f, 0.8f, 0.2f}).reshape({4, 2}), 2);
  auto kept = [&](DropPolicy policy) {
    const auto plan = make_dispatch_plan(routing, 2, 0.5, policy);
    EXPECT_EQ(plan.capacity, 2);
    EXPECT_EQ(plan.num_dropped, 4);
    std::set<std::pair<int64_t, int64_t>> out;  // (token, expert)
    for (int64_t i = 0; i < plan.token_index.size(0); ++i)
      out.emplace(plan.token_index[i].item<int64_t>(), plan.expert_of_row[i].item<int64_t>());
    return out;
  };
  using Kept = std::set<std::pair<int64_t, int64_t>>;
  EXPECT_EQ(kept(DropPolicy::kPriority), (Kept{{1, 0}, {3, 0}, {2, 1}, {1, 1}}));
  EXPECT_EQ(kept(DropPolicy::kWeight), (Kept{{1, 0}, {3, 0}, {2, 1}, {0, 1}}));
  EXPECT_EQ(kept(DropPolicy::kPosition), (Kept{{0, 0}, {1, 0}, {2, 1}, {0, 1}}));
  EXPECT_EQ(parse_drop_policy("priority"), DropPolicy::kPriority);
  EXPECT_STREQ(drop_policy_name(DropPolicy::kPriority), "priority");
}
