// Noisy top-k gating (Shazeer et al. 2017, eq. 3-5) and its balancing losses.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "grad_check.h"
#include "moelab/balance/balance_losses.h"
#include "moelab/balance/importance_loss.h"
#include "moelab/balance/load_loss.h"
#include "moelab/routing/noisy_topk_router.h"
#include "moelab/util/error.h"

using namespace moelab;

namespace {

std::shared_ptr<NoisyTopKRouter> make_router(int64_t d, int64_t e, int64_t k) {
  auto router = std::make_shared<NoisyTopKRouter>(RouterOptions(d, e, k));
  torch::NoGradGuard no_grad;
  // The paper initialises at zero; random weights make the test see real, distinct logits.
  router->w_gate.normal_(0, 1);
  router->w_noise.normal_(0, 0.5);
  return router;
}

}  // namespace

TEST(NoisyTopKRouter, ExactlyKNonZerosPerTokenAndWeightsSumToOne) {
  torch::manual_seed(10);
  for (int64_t k : {1, 2, 4, 8}) {
    auto router = make_router(6, 8, k);
    router->train();
    const auto routing = router->route(torch::randn({40, 6}));
    const auto gates = dense_gates(routing);
    EXPECT_TRUE(torch::equal((gates > 0).sum(1), torch::full({40}, k, torch::kInt64))) << "k=" << k;
    EXPECT_TRUE(torch::allclose(gates.sum(1), torch::ones({40}), 1e-5, 1e-6));
    EXPECT_TRUE(torch::allclose(routing.gate_weight.sum(1), torch::ones({40}), 1e-5, 1e-6));
    EXPECT_EQ(routing.expert_index.sizes(), (std::vector<int64_t>{40, k}));
    // The listed experts are the non-zero gates.
    EXPECT_TRUE(torch::all(gates.gather(1, routing.expert_index) > 0).item<bool>());
  }
}

TEST(NoisyTopKRouter, NoNoiseInEvaluation) {
  torch::manual_seed(11);
  auto router = make_router(5, 6, 2);
  const auto x = torch::randn({30, 5});
  router->eval();
  const auto a = router->route(x);
  const auto b = router->route(x);
  EXPECT_TRUE(torch::equal(a.expert_index, b.expert_index));
  EXPECT_TRUE(torch::equal(a.gate_weight, b.gate_weight));
  // Equal to top-k of the clean logits.
  const auto [values, index] = x.mm(router->w_gate).topk(2, 1);
  EXPECT_TRUE(torch::equal(a.expert_index, index));
  EXPECT_TRUE(torch::allclose(a.gate_weight, torch::softmax(values, 1)));
  // In training the noise changes the choice for some tokens.
  router->train();
  const auto noisy = router->route(x);
  EXPECT_FALSE(torch::equal(noisy.expert_index, a.expert_index));
}

TEST(NoisyTopKRouter, RejectsBadSizes) {
  EXPECT_THROW(NoisyTopKRouter(RouterOptions(4, 4, 5)), Error);
  EXPECT_THROW(NoisyTopKRouter(RouterOptions(4, 4, 0)), Error);
  EXPECT_THROW(NoisyTopKRouter(RouterOptions(4, 0, 1)), Error);
}

TEST(ImportanceLoss, HandWorkedValues) {
  // v = [1, 3]: mean 2, population variance 1 -> CV^2 = 0.25.
  EXPECT_NEAR(cv_squared(torch::tensor({1.0, 3.0})).item<double>(), 0.25, 1e-9);
  EXPECT_NEAR(cv_squared(torch::tensor({2.0, 2.0, 2.0})).item<double>(), 0.0, 1e-12);
  EXPECT_EQ(cv_squared(torch::tensor({5.0})).item<double>(), 0.0);
  const auto gates = torch::tensor({{1.0, 0.0}, {0.5, 0.5}});  // importance [1.5, 0.5] -> var 0.25 / 1
  EXPECT_NEAR(importance_loss(gates).item<double>(), 0.25, 1e-9);
}

TEST(LoadLoss, SmoothEstimateAgreesWithMonteCarlo) {
  // One token, fixed clean logits and noise scale; sample the noise many times. The smooth
  // estimator, averaged over the samples, must equal the frequency of "expert in top-k".
  torch::manual_seed(12);
  const int64_t e = 5, k = 2, samples = 200000;
  const auto clean = torch::tensor({0.3, -0.2, 0.8, 0.0, -0.5}, torch::kDouble).expand({samples, e});
  const auto std = torch::tensor({0.5, 0.9, 0.4, 0.7, 1.1}, torch::kDouble).expand({samples, e});
  const auto noisy = clean + torch::randn({samples, e}, torch::kDouble) * std;
  const auto [top_values, top_index] = noisy.topk(k + 1, 1);
  const auto smooth = prob_in_top_k(clean, noisy, std, top_values, k).mean(0);  // [E]
  const auto in_top_k = torch::zeros({samples, e}, torch::kDouble)
                            .scatter(1, top_index.narrow(1, 0, k), 1.0)
                            .mean(0);  // [E]
  // Monte-Carlo standard error <= sqrt(0.25 / 2e5) ~ 0.0011; allow 5 of them.
  constexpr double kTolerance = 0.0056;
  for (int64_t i = 0; i < e; ++i)
    EXPECT_NEAR(smooth[i].item<double>(), in_top_k[i].item<double>(), kTolerance) << "expert " << i;
  EXPECT_NEAR(smooth.sum().item<double>(), static_cast<double>(k), 0.02);
}

TEST(LoadLoss, FiniteWhenNoiseVanishes) {
  const auto clean = torch::tensor({{0.1, 0.2, 0.3}, {0.3, 0.3, 0.1}});
  const auto noise_std = torch::zeros_like(clean);  // sigma -> 0
  const auto [top, index] = clean.topk(2, 1);
  const auto load = smooth_load(clean, clean, noise_std, top, 1);
  EXPECT_TRUE(torch::isfinite(load).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(cv_squared(load)).item<bool>());
}

TEST(LoadLoss, GradientsMatchFiniteDifferences) {
  // Importance + load loss of the router w.r.t. gate weights, noise weights and inputs. The noise
  // sample is fixed by re-seeding before every evaluation.
  torch::manual_seed(13);
  auto router = std::make_shared<NoisyTopKRouter>(RouterOptions(4, 6, 2));
  router->to(torch::kDouble);
  {
    torch::NoGradGuard no_grad;
    router->w_gate.normal_(0, 0.5);
    router->w_noise.normal_(0, 0.5);
  }
  router->train();
  auto x = torch::randn({12, 4}, torch::kDouble).requires_grad_(true);
  auto loss = [&] {
    torch::manual_seed(99);
    return balance_losses(router->route(x), BalanceWeights{1.0, 1.0, 0.0, 0.0}).aux_loss;
  };
  moelab::testing::expect_gradients_match(loss, {{"w_gate", router->w_gate}, {"w_noise", router->w_noise}, {"x", x}});
  const BalanceWeights kLoadOnly{0.0, 1.0, 0.0, 0.0};
  // The load term alone also carries gradient to the noise weights (it is not just importance).
  auto load_only = std::make_shared<NoisyTopKRouter>(RouterOptions(4, 6, 2));
  load_only->to(torch::kDouble);
  {
    torch::NoGradGuard no_grad;
    load_only->w_gate.copy_(router->w_gate);
    load_only->w_noise.copy_(router->w_noise);
  }
  auto load_loss = [&] {
    torch::manual_seed(99);
    return balance_losses(load_only->route(x), kLoadOnly).aux_loss;
  };
  moelab::testing::expect_gradients_match(load_loss, {{"w_gate", load_only->w_gate}, {"w_noise", load_only->w_noise}});
  torch::manual_seed(99);
  balance_losses(load_only->route(x), kLoadOnly).aux_loss.backward();
  EXPECT_GT(load_only->w_noise.grad().abs().sum().item<double>(), 0.0);
}
