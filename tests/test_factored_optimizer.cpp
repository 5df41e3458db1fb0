// The factored optimiser against updates computed by hand, its lazy per-expert semantics, its state
// size, and a save/load round trip.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <sstream>

#include "moelab/train/factored_optimizer.h"

using namespace moelab;

TEST(FactoredOptimizer, MatrixUpdateMatchesTheHandComputedOne) {
  auto w = torch::zeros({2, 3}, torch::kDouble).requires_grad_(true);
  const double g[2][3] = {{1, 2, 3}, {4, 5, 6}};
  w.mutable_grad() = torch::tensor({1.0, 2.0, 3.0, 4.0, 5.0, 6.0}, torch::kDouble).view({2, 3});
  FactoredOptimizer optimizer({torch::optim::OptimizerParamGroup({w})}, FactoredOptions(0.1).beta2(0.9).eps(0.0));
  optimizer.step();
  // One step: R = 0.1 r, C = 0.1 c with r, c the row and column means of g^2; the bias correction
  // 1 - 0.9 cancels one factor 0.1, the division by mean(R) the other: V = r_i c_j / mean(r).
  double r[2], c[3], mean_r = 0;
  for (int i = 0; i < 2; ++i) r[i] = (g[i][0] * g[i][0] + g[i][1] * g[i][1] + g[i][2] * g[i][2]) / 3.0;
  for (int j = 0; j < 3; ++j) c[j] = (g[0][j] * g[0][j] + g[1][j] * g[1][j]) / 2.0;
  mean_r = (r[0] + r[1]) / 2.0;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      EXPECT_NEAR(w[i][j].item<double>(), -0.1 * g[i][j] / std::sqrt(r[i] * c[j] / mean_r), 1e-12) << i << "," << j;
  EXPECT_EQ(optimizer.state_numel(w), 2 + 3);
}

TEST(FactoredOptimizer, VectorsKeepAFullSecondMoment) {
  auto b = torch::zeros({3}, torch::kDouble).requires_grad_(true);
  b.mutable_grad() = torch::tensor({0.5, -2.0, 3.0}, torch::kDouble);
  FactoredOptimizer optimizer({torch::optim::OptimizerParamGroup({b})}, FactoredOptions(0.1).beta2(0.99).eps(0.0));
  optimizer.step();  // bias-corrected V = g^2: the first step moves each entry by lr against its sign
  EXPECT_TRUE(torch::allclose(b, torch::tensor({-0.1, 0.1, -0.1}, torch::kDouble)));
  EXPECT_EQ(optimizer.state_numel(b), 3);
}

TEST(FactoredOptimizer, ExpertsWithoutTokensAreLeftAlone) {
  torch::manual_seed(80);
  auto stacked = torch::randn({3, 2, 4}, torch::kDouble).requires_grad_(true);  // 3 experts
  const auto before = stacked.detach().clone();
  FactoredOptions options(0.05);
  FactoredOptimizer optimizer({torch::optim::OptimizerParamGroup({stacked}, std::make_unique<FactoredOptions>(
                                                                               FactoredOptions(options).expert_stacked(true)))},
                              options);
  auto grad = torch::randn({3, 2, 4}, torch::kDouble);
  grad[1].zero_();  // expert 1 received no tokens
  stacked.mutable_grad() = grad;
  optimizer.step();
  EXPECT_TRUE(torch::equal(stacked[1], before[1]));
  EXPECT_FALSE(torch::equal(stacked[0], before[0]));
  EXPECT_FALSE(torch::equal(stacked[2], before[2]));
  // The same update as an optimiser that sees expert 0 alone: experts do not share state.
  auto alone = before[0].clone().requires_grad_(true);
  alone.mutable_grad() = grad[0].clone();
  FactoredOptimizer single({torch::optim::OptimizerParamGroup({alone})}, options);
  single.step();
  EXPECT_TRUE(torch::allclose(stacked[0], alone, 1e-12, 1e-12));
  // State: per expert a row and a column vector, 3 * (2 + 4), instead of Adam's 2 * 24.
  EXPECT_EQ(optimizer.state_numel(stacked), 3 * (2 + 4));
}

TEST(FactoredOptimizer, WeightDecayDoesNotWakeExpertsWithoutTokens) {
  // Decay is part of the update, not of the "did this expert get tokens" test: an idle expert keeps
  // its weights and its step count, as the lazy rule says, however large the decay.
  torch::manual_seed(81);
  auto stacked = torch::randn({3, 2, 4}, torch::kDouble).requires_grad_(true);
  const auto before = stacked.detach().clone();
  const auto options = FactoredOptions(0.05).weight_decay(0.5);
  FactoredOptimizer optimizer(
      {torch::optim::OptimizerParamGroup(
          {stacked}, std::make_unique<FactoredOptions>(FactoredOptions(options).expert_stacked(true)))},
      options);
  auto grad = torch::randn({3, 2, 4}, torch::kDouble);
  grad[2].zero_();
  stacked.mutable_grad() = grad;
  optimizer.step();
  EXPECT_TRUE(torch::equal(stacked[2], before[2]));
  EXPECT_FALSE(torch::equal(stacked[0], before[0]));
  // An active expert gets the decayed update: the same as a lone optimiser with the same decay.
  auto alone = before[1].clone().requires_grad_(true);
  alone.mutable_grad() = grad[1].clone();
  FactoredOptimizer single({torch::optim::OptimizerParamGroup({alone})}, options);
  single.step();
  EXPECT_TRUE(torch::allclose(stacked[1], alone, 1e-12, 1e-12));
  // A second step with tokens for expert 2 only: its first update, bias-corrected as a first step.
  auto alone2 = before[2].clone().requires_grad_(true);
  auto grad2 = torch::zeros({3, 2, 4}, torch::kDouble);
  grad2[2] = torch::randn({2, 4}, torch::kDouble);
  stacked.mutable_grad() = grad2;
  optimizer.step();
  alone2.mutable_grad() = grad2[2].clone();
  FactoredOptimizer single2({torch::optim::OptimizerParamGroup({alone2})}, options);
  single2.step();
  EXPECT_TRUE(torch::allclose(stacked[2], alone2, 1e-12, 1e-12));
}

TEST(FactoredOptimizer, SaveAndLoadContinueIdentically) {
  torch::manual_seed(81);
  auto make = [] { return torch::randn({4, 5}, torch::kDouble).requires_grad_(true); };
  auto a = make();
  auto b = a.detach().clone().requires_grad_(true);
  FactoredOptimizer first({torch::optim::OptimizerParamGroup({a})}, FactoredOptions(0.01));
  const auto g1 = torch::randn({4, 5}, torch::kDouble), g2 = torch::randn({4, 5}, torch::kDouble);
  a.mutable_grad() = g1.clone();
  first.step();
  torch::serialize::OutputArchive out;
  first.save(out);
  std::ostringstream bytes;
  out.save_to(bytes);

  {
    torch::NoGradGuard no_grad;
    b.copy_(a);
  }
  FactoredOptimizer second({torch::optim::OptimizerParamGroup({b})}, FactoredOptions(0.01));
  torch::serialize::InputArchive in;
  std::istringstream read(bytes.str());
  in.load_from(read);
  second.load(in);
  a.mutable_grad() = g2.clone();
  b.mutable_grad() = g2.clone();
  first.step();
  second.step();
  EXPECT_TRUE(torch::equal(a, b));
}
