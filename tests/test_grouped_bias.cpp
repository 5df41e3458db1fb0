// The fused per-expert bias (+ ReLU) of the expert banks against its LibTorch twin and finite
// differences.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <numeric>

#include "grad_check.h"
#include "moelab/dispatch/grouped_bias.h"

using namespace moelab;

namespace {

// A plan with only what grouped_bias reads: the blocks and each row's expert.
DispatchPlan plan_of(const std::vector<int64_t>& rows_per_expert) {
  DispatchPlan plan;
  plan.rows_per_expert = rows_per_expert;
  std::vector<int64_t> expert_of_row;
  for (size_t e = 0; e < rows_per_expert.size(); ++e)
    expert_of_row.insert(expert_of_row.end(), rows_per_expert[e], static_cast<int64_t>(e));
  plan.expert_of_row = torch::tensor(expert_of_row, torch::kLong);
  return plan;
}

}  // namespace

TEST(GroupedBias, FusedEqualsTheReferenceInOutputsAndGradients) {
  struct Types {
    torch::ScalarType x, bias;
    double tolerance;  // relative, on values of order one
  };
  // bf16 sums: the reference's index_add accumulates the bias gradient in bf16, the fused kernel in
  // float32 and rounds once.
  const std::vector<Types> types = {{torch::kFloat, torch::kFloat, 1e-5},
                                    {torch::kDouble, torch::kDouble, 1e-12},
                                    {torch::kBFloat16, torch::kBFloat16, 3e-2},
                                    {torch::kBFloat16, torch::kFloat, 1e-5}};
  // Experts with zero rows, all rows on one expert, one row per expert, no rows at all.
  const std::vector<std::vector<int64_t>> layouts = {{5, 0, 7, 1, 0, 20}, {0, 13, 0}, {1, 1, 1, 1}, {0, 0}};
  for (const auto& t : types) {
    for (const auto& rows : layouts) {
      for (const auto activation : {BiasActivation::kNone, BiasActivation::kRelu}) {
        SCOPED_TRACE(std::string(torch::toString(t.x)) + " + " + torch::toString(t.bias) + ", " +
                     (activation == BiasActivation::kRelu ? "relu" : "none") + ", " +
                     std::to_string(rows.size()) + " experts, " +
                     std::to_string(std::accumulate(rows.begin(), rows.end(), int64_t{0})) + " rows");
        torch::manual_seed(31);
        const auto plan = plan_of(rows);
        const int64_t m = plan.expert_of_row.size(0), width = 37;
        const auto x0 = torch::randn({m, width}).to(t.x);
        const auto b0 = torch::randn({static_cast<int64_t>(rows.size()), width}).to(t.bias);
        auto x1 = x0.clone().requires_grad_(true), b1 = b0.clone().requires_grad_(true);
        auto x2 = x0.clone().requires_grad_(true), b2 = b0.clone().requires_grad_(true);
        const auto fused = grouped_bias(x1, b1, plan, activation);
        const auto expected = grouped_bias_reference(x2, b2, plan.expert_of_row, activation);
        ASSERT_EQ(fused.scalar_type(), expected.scalar_type());
        EXPECT_TRUE(torch::equal(fused, expected)) << "one add (and max) per element in either form";
        const auto probe = torch::randn({m, width}).to(fused.scalar_type());
        (fused * probe).sum().backward();
        (expected * probe).sum().backward();
        ASSERT_TRUE(x1.grad().defined() && b1.grad().defined());
        EXPECT_EQ(x1.grad().scalar_type(), t.x);
        EXPECT_EQ(b1.grad().scalar_type(), t.bias);
        EXPECT_TRUE(torch::allclose(x1.grad(), x2.grad(), t.tolerance, t.tolerance));
        if (b2.grad().defined())
          EXPECT_TRUE(torch::allclose(b1.grad().to(torch::kDouble), b2.grad().to(torch::kDouble), t.tolerance,
                                      t.tolerance * m));
        else  // the reference gives no gradient to a bias no row reads
          EXPECT_EQ(b1.grad().abs().max().item<double>(), 0.0);
      }
    }
  }
}

TEST(GroupedBias, GradientsMatchFiniteDifferences) {
  torch::manual_seed(32);
  const auto plan = plan_of({3, 0, 4, 2});
  const auto x = torch::randn({9, 5}, torch::kDouble).requires_grad_(true);
  const auto bias = torch::randn({4, 5}, torch::kDouble).requires_grad_(true);
  const auto probe = torch::randn({9, 5}, torch::kDouble);
  for (const auto activation : {BiasActivation::kNone, BiasActivation::kRelu}) {
    moelab::testing::expect_gradients_match(
        [&] { return (grouped_bias(x, bias, plan, activation) * probe).sum(); }, {{"x", x}, {"bias", bias}});
  }
}

TEST(GroupedBias, RefusesCountsThatDoNotMatchTheRows) {
  const auto x = torch::randn({4, 3});
  EXPECT_THROW(grouped_bias(x, torch::randn({2, 3}), plan_of({1, 2}), BiasActivation::kRelu), c10::Error);
  EXPECT_THROW(grouped_bias(x, torch::randn({3, 3}), plan_of({1, 3}), BiasActivation::kRelu), c10::Error);
  EXPECT_THROW(grouped_bias(x, torch::randn({2, 4}), plan_of({1, 3}), BiasActivation::kRelu), c10::Error);
}
