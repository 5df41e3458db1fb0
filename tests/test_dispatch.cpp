// Dispatch plan, grouped matmul and combine against their obviously-correct twins.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <numeric>

#include "grad_check.h"
#include "moelab/dispatch/dispatch_plan.h"
#include "moelab/dispatch/grouped_matmul.h"
#include "moelab/util/error.h"

using namespace moelab;

namespace {

Routing random_routing(int64_t tokens, int64_t experts, int64_t k, torch::Dtype dtype = torch::kFloat) {
  Routing routing;
  // k distinct experts per token, random weights summing to one.
  routing.expert_index = torch::rand({tokens, experts}).argsort(/*dim=*/int64_t{1}).narrow(1, 0, k).contiguous();
  routing.gate_weight = torch::softmax(torch::randn({tokens, k}, dtype), 1);
  routing.num_experts = experts;
  return routing;
}

}  // namespace

TEST(GroupedMatmul, MatchesReferenceIncludingEmptyExperts) {
  torch::manual_seed(1);
  const std::vector<int64_t> rows = {3, 0, 5, 1, 0};
  const auto x = torch::randn({9, 4});
  const auto w = torch::randn({5, 4, 6});
  const auto fast = grouped_matmul(x, w, rows);
  const auto slow = grouped_matmul_reference(x, w, rows);
  EXPECT_TRUE(torch::allclose(fast, slow, 1e-5, 1e-6));
}

TEST(GroupedMatmul, BackwardMatchesFiniteDifferences) {
  torch::manual_seed(2);
  const std::vector<int64_t> rows = {2, 0, 3, 1};
  auto x = torch::randn({6, 3}, torch::kDouble).requires_grad_(true);
  auto w = torch::randn({4, 3, 5}, torch::kDouble).requires_grad_(true);
  const auto probe = torch::randn({6, 5}, torch::kDouble);  // a non-trivial upstream gradient
  moelab::testing::expect_gradients_match([&] { return (grouped_matmul(x, w, rows) * probe).sum(); },
                                          {{"x", x}, {"weight", w}});
}

TEST(GroupedMatmul, EmptyExpertGetsZeroGradientAndRejectsBadCounts) {
  auto x = torch::randn({4, 3}).requires_grad_(true);
  auto w = torch::randn({3, 3, 2}).requires_grad_(true);
  grouped_matmul(x, w, {4, 0, 0}).sum().backward();
  EXPECT_EQ(w.grad()[1].abs().sum().item<float>(), 0.0f);
  EXPECT_GT(w.grad()[0].abs().sum().item<float>(), 0.0f);
  EXPECT_THROW(grouped_matmul(x, w, {1, 1, 1}), c10::Error);  // counts sum to 3, x has 4 rows
  EXPECT_THROW(grouped_matmul(x, w, {4, 0}), c10::Error);     // 2 counts for 3 experts
}

TEST(DispatchPlan, GroupsRowsByExpertAndCombineInvertsIt) {
  torch::manual_seed(3);
  const int64_t n = 50, e = 7, k = 3, d = 5;
  const auto routing = random_routing(n, e, k);
  const auto plan = make_dispatch_plan(routing, e, /*capacity_factor=*/0);
  EXPECT_EQ(plan.token_index.size(0), n * k);
  EXPECT_EQ(plan.num_dropped, 0);
  // Rows are sorted by expert and the counts agree with the routing.
  EXPECT_TRUE(torch::equal(plan.expert_of_row, std::get<0>(plan.expert_of_row.sort())));
  const auto counts = torch::bincount(routing.expert_index.reshape({-1}), {}, e);
  for (int64_t i = 0; i < e; ++i) EXPECT_EQ(plan.rows_per_expert[i], counts[i].item<int64_t>());
  // Identity experts: combine(dispatch(x)) = x * sum of gate weights = x.
  const auto x = torch::randn({n, d});
  EXPECT_TRUE(torch::allclose(combine_rows(dispatch_rows(x, plan), plan), x, 1e-5, 1e-6));
}

TEST(DispatchPlan, CapacityDropsOverflowServingFirstChoicesFirst) {
  // Every token picks expert 0 first and expert 1 second: expert 0 overflows.
  const int64_t n = 8, e = 4, k = 2;
  Routing routing;
  routing.expert_index = torch::tensor({0, 1}, torch::kInt64).repeat({n, 1});
  routing.gate_weight = torch::full({n, k}, 0.5);
  routing.num_experts = e;
  const auto plan = make_dispatch_plan(routing, e, /*capacity_factor=*/1.0);
  EXPECT_EQ(plan.capacity, 4);  // ceil(1.0 * 8 * 2 / 4)
  EXPECT_EQ(plan.rows_per_expert, (std::vector<int64_t>{4, 4, 0, 0}));
  EXPECT_EQ(plan.num_dropped, 8);
  // Earlier tokens win: expert 0 keeps tokens 0..3.
  EXPECT_TRUE(torch::equal(plan.token_index.narrow(0, 0, 4), torch::arange(4, torch::kInt64)));
  // A first choice beats a second choice for the same expert.
  Routing mixed;
  mixed.expert_index = torch::tensor({{1, 0}, {0, 1}}, torch::kInt64);  // token 0 wants 0 second, token 1 first
  mixed.gate_weight = torch::full({2, 2}, 0.5);
  mixed.num_experts = 2;
  const auto tight = make_dispatch_plan(mixed, 2, /*capacity_factor=*/0.5);  // capacity 1
  EXPECT_EQ(tight.capacity, 1);
  const auto kept_for_expert0 = tight.token_index[0].item<int64_t>();
  EXPECT_EQ(kept_for_expert0, 1);
}

// Every execution path of the grouped product against the autograd oracle, forward and backward,
// with empty experts and with every row on one expert.
TEST(GroupedMatmul, EveryPathMatchesTheReference) {
  torch::manual_seed(4);
  // Two threads, so that the parallel path really splits experts (ctest runs with one).
  const int threads_before = at::get_num_threads();
  at::set_num_threads(2);
  const std::vector<std::vector<int64_t>> cases = {{3, 0, 5, 1, 0}, {0, 0, 9, 0, 0}, {2, 2, 2, 2, 1}, {0, 0, 0, 0, 0}};
  for (const auto& rows : cases)
    for (auto path : {GroupedPath::kLoop, GroupedPath::kParallel, GroupedPath::kPaddedBmm, GroupedPath::kOneDnn}) {
      SCOPED_TRACE(grouped_path_name(path));
      const int64_t m = std::accumulate(rows.begin(), rows.end(), int64_t{0});
      const auto x0 = torch::randn({m, 4});
      const auto w0 = torch::randn({5, 4, 6});
      const auto probe = torch::randn({m, 6});
      auto x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
      auto xr = x0.clone().requires_grad_(true), wr = w0.clone().requires_grad_(true);
      const auto fast = grouped_matmul(x, w, rows, path);
      const auto slow = grouped_matmul_reference(xr, wr, rows);
      EXPECT_TRUE(torch::allclose(fast, slow, 1e-5, 1e-5));
      (fast * probe).sum().backward();
      (slow * probe).sum().backward();
      EXPECT_TRUE(torch::allclose(x.grad(), xr.grad(), 1e-5, 1e-5));
      EXPECT_TRUE(torch::allclose(w.grad(), wr.grad(), 1e-5, 1e-5));
      for (size_t e = 0; e < rows.size(); ++e) {
        if (rows[e] == 0) {
          EXPECT_EQ(w.grad()[static_cast<int64_t>(e)].abs().sum().item<float>(), 0.0f);
        }
      }
    }
  at::set_num_threads(threads_before);
}

TEST(GroupedMatmul, AutoMeasuresOnceAndRemembersItsChoice) {
  forget_grouped_paths();
  const auto x = torch::randn({64, 8});
  const auto w = torch::randn({4, 8, 8});
  const std::vector<int64_t> rows = {16, 16, 16, 16};
  const auto shape = grouped_shape_of(x, w, rows);
  EXPECT_EQ(chosen_grouped_path(shape), GroupedPath::kAuto);
  const auto out = grouped_matmul(x, w, rows, GroupedPath::kAuto);
  const auto chosen = chosen_grouped_path(shape);
  EXPECT_NE(chosen, GroupedPath::kAuto);
  EXPECT_NE(chosen, GroupedPath::kReference);
  EXPECT_TRUE(torch::allclose(out, grouped_matmul_reference(x, w, rows), 1e-5, 1e-5));
  // Average rows per expert set the class: 16 and 17 rows per expert share one, 32 does not.
  EXPECT_EQ(grouped_shape_of(torch::randn({68, 8}), w, {17, 17, 17, 17}).rows_bucket, shape.rows_bucket);
  EXPECT_NE(grouped_shape_of(torch::randn({128, 8}), w, {32, 32, 32, 32}).rows_bucket, shape.rows_bucket);
  EXPECT_THROW(parse_grouped_path("fastest"), moelab::Error);
  for (auto path : {GroupedPath::kAuto, GroupedPath::kLoop, GroupedPath::kParallel, GroupedPath::kPaddedBmm,
                    GroupedPath::kOneDnn, GroupedPath::kReference})
    EXPECT_EQ(parse_grouped_path(grouped_path_name(path)), path);
}
