// Dispatch plan, grouped matmul and combine against their obviously-correct twins.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "grad_check.h"
#include "moelab/config/config.h"
#include "moelab/device/device.h"
#include "moelab/dispatch/dispatch_plan.h"
#include "moelab/dispatch/grouped_matmul.h"
#include "moelab/dispatch/grouped_path_cache.h"
#include "moelab/dispatch/stream_kernels.h"
#include "moelab/util/error.h"
#include "test_util.h"

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

namespace {

// One product along `path` with these row counts (one expert per count) against the autograd oracle
// (run in float64 on the CPU), forward and backward; experts without rows get zero weight gradients.
void expect_rows_match_reference(GroupedPath path, const torch::TensorOptions& options, double tolerance,
                                 const std::vector<int64_t>& rows) {
  const int64_t experts = static_cast<int64_t>(rows.size());
  const int64_t m = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  // Widths of 8 and 16: GPU grouped kernels want 16-byte aligned rows.
  const auto x0 = torch::randn({m, 8}, torch::kDouble);
  const auto w0 = torch::randn({experts, 8, 16}, torch::kDouble);
  const auto probe = torch::randn({m, 16}, torch::kDouble);
  auto x = x0.to(options).requires_grad_(true), w = w0.to(options).requires_grad_(true);
  auto xr = x0.to(options).to(torch::kCPU, torch::kDouble).requires_grad_(true);
  auto wr = w0.to(options).to(torch::kCPU, torch::kDouble).requires_grad_(true);
  const auto fast = grouped_matmul(x, w, rows, path);
  const auto slow = grouped_matmul_reference(xr, wr, rows);
  EXPECT_EQ(fast.device(), x.device());
  auto close = [&](const torch::Tensor& a, const torch::Tensor& b) {
    return torch::allclose(a.to(torch::kCPU, torch::kDouble), b, tolerance, tolerance);
  };
  EXPECT_TRUE(close(fast, slow));
  (fast * probe.to(options)).sum().backward();
  (slow * probe).sum().backward();
  EXPECT_TRUE(close(x.grad(), xr.grad()));
  EXPECT_TRUE(close(w.grad(), wr.grad()));
  std::vector<int64_t> empty;
  for (int64_t e = 0; e < experts; ++e)
    if (rows[e] == 0) empty.push_back(e);
  if (!empty.empty()) {
    const auto index = torch::tensor(empty, torch::kInt64).to(w.grad().device());
    EXPECT_EQ(w.grad().index_select(0, index).abs().sum().item<double>(), 0.0);
  }
}

// One execution path against the oracle with empty experts, every row on one expert, and no rows at all.
void expect_path_matches_reference(GroupedPath path, const torch::TensorOptions& options, double tolerance) {
  SCOPED_TRACE(grouped_path_name(path) + " on " + options.device().str() + " in " +
               std::string(c10::toString(c10::typeMetaToScalarType(options.dtype()))));
  for (const auto& rows : std::vector<std::vector<int64_t>>{{3, 0, 5, 1, 0}, {0, 0, 9, 0, 0}, {2, 2, 2, 2, 1}, {0, 0, 0, 0, 0}})
    expect_rows_match_reference(path, options, tolerance, rows);
}

}  // namespace

TEST(GroupedMatmul, EveryPathMatchesTheReference) {
  torch::manual_seed(4);
  // Two threads, so that the parallel path really splits experts (ctest runs with one).
  const int threads_before = at::get_num_threads();
  at::set_num_threads(2);
  for (auto path : {GroupedPath::kLoop, GroupedPath::kParallel, GroupedPath::kPaddedBmm})
    expect_path_matches_reference(path, torch::kFloat, 1e-5);
  // Without oneDNN's sgemm these two would quietly run the loop: say so rather than test it twice.
  if (onednn_grouped_available()) {
    for (auto path : {GroupedPath::kOneDnn, GroupedPath::kOneDnnTransposed})
      expect_path_matches_reference(path, torch::kFloat, 1e-5);
  } else {
    std::cout << "[ INFO     ] oneDNN's sgemm is not reachable in " << libtorch_description()
              << ": the onednn paths run the loop\n";
  }
  // bf16 through oneDNN's bf16 gemm: inputs rounded to bf16 alike, so only the result's rounding
  // (one bf16 ulp, 2^-8 relative) separates it from the float64 reference.
  if (onednn_bf16_grouped_available()) {
    expect_path_matches_reference(GroupedPath::kOneDnn, torch::kBFloat16, 0.05);
    expect_rows_match_reference(GroupedPath::kOneDnn, torch::kBFloat16, 0.05, {40, 0, 7, 33, 1, 65});
  } else {
    std::cout << "[ INFO     ] oneDNN's bf16 gemm is not reachable in " << libtorch_description()
              << ": bf16 on the onednn path runs the loop\n";
  }
  if (stream_kernels_isa() != StreamIsa::kNone) {
    expect_path_matches_reference(GroupedPath::kStreaming, torch::kFloat, 1e-5);
    // Blocks of more than 32 rows (64 for the input gradient) go through a GEMM instead, beside
    // streamed ones.
    expect_rows_match_reference(GroupedPath::kStreaming, torch::kFloat, 1e-5, {40, 0, 7, 33, 1, 65});
  } else
    std::cout << "[ INFO     ] no streaming kernels on this CPU or build: the streaming path runs the loop\n";
  at::set_num_threads(threads_before);
}

// LibTorch's grouped product, where this LibTorch has one (2.8 and later; on the CPU it loops).
TEST(GroupedMatmul, GroupedMmPathMatchesTheReference) {
  if (!grouped_mm_available()) GTEST_SKIP() << "no at::_grouped_mm in " << libtorch_description();
  torch::manual_seed(5);
  expect_path_matches_reference(GroupedPath::kGroupedMm, torch::kFloat, 1e-5);
}

// More experts than LibTorch's CUDA grouped kernel takes in one call (it refuses 1,024): the path
// splits them into chunks, and the result and gradients stay the reference's. Rows straddle chunk
// boundaries and some experts, the last one among them, get none.
namespace {
void expect_many_experts_match_reference(const torch::TensorOptions& options, double tolerance) {
  std::vector<int64_t> rows(1100);
  // Experts 512 to 1,023 (one whole chunk of the path's) get none either.
  for (int64_t e = 0; e < 1100; ++e)
    rows[e] = (e % 7 == 3 || e == 1100 - 1 || (e >= 512 && e < 1024)) ? 0 : 1 + e % 3;
  expect_rows_match_reference(GroupedPath::kGroupedMm, options, tolerance, rows);
}
}  // namespace

TEST(GroupedMatmul, GroupedMmPathTakesMoreExpertsThanOneCallAllows) {
  if (!grouped_mm_available()) GTEST_SKIP() << "no at::_grouped_mm in " << libtorch_description();
  torch::manual_seed(8);
  expect_many_experts_match_reference(torch::TensorOptions().dtype(torch::kFloat), 1e-5);
}

// The GPU twins of the tests above: every path in float32, and the bf16 grouped kernel (tolerance
// for bf16's 8 bits of mantissa over sums of 8 and up to 9 products).
TEST(GroupedMatmulCuda, EveryPathMatchesTheReferenceOnTheGpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (" << libtorch_description() << ")";
  torch::manual_seed(6);
  const auto gpu = torch::TensorOptions().device(torch::kCUDA);
  for (auto path : {GroupedPath::kLoop, GroupedPath::kPaddedBmm})
    expect_path_matches_reference(path, gpu.dtype(torch::kFloat), 1e-4);
  if (grouped_mm_available() && cuda_capability(torch::kCUDA) >= 90) {
    expect_path_matches_reference(GroupedPath::kGroupedMm, gpu.dtype(torch::kBFloat16), 0.1);
    expect_many_experts_match_reference(gpu.dtype(torch::kBFloat16), 0.1);
  }
  for (auto dtype : {torch::kFloat, torch::kBFloat16})
    expect_path_matches_reference(GroupedPath::kLoop, gpu.dtype(dtype), dtype == torch::kFloat ? 1e-4 : 0.1);
}

// The dispatch plan on the GPU equals the one made on the CPU, capacity and empty slots included.
TEST(DispatchPlanCuda, SameRowsOnTheGpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (" << libtorch_description() << ")";
  torch::manual_seed(7);
  auto routing = random_routing(40, 6, 2);
  routing.expert_index.index_put_({torch::indexing::Slice(0, 5), 1}, kNoExpert);
  for (double capacity : {0.0, 0.75}) {
    const auto cpu = make_dispatch_plan(routing, 6, capacity);
    Routing on_gpu = routing;
    on_gpu.expert_index = routing.expert_index.to(torch::kCUDA);
    on_gpu.gate_weight = routing.gate_weight.to(torch::kCUDA);
    const auto gpu = make_dispatch_plan(on_gpu, 6, capacity);
    EXPECT_EQ(gpu.rows_per_expert, cpu.rows_per_expert);
    EXPECT_EQ(gpu.num_dropped, cpu.num_dropped);
    EXPECT_TRUE(torch::equal(gpu.token_index.cpu(), cpu.token_index));
    EXPECT_TRUE(torch::equal(gpu.assigned_per_expert.cpu(), cpu.assigned_per_expert));
  }
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
                    GroupedPath::kOneDnn, GroupedPath::kOneDnnTransposed, GroupedPath::kStreaming,
                    GroupedPath::kReference})
    EXPECT_EQ(parse_grouped_path(grouped_path_name(path)), path);
  EXPECT_EQ(parse_grouped_path("grouped_mm"), GroupedPath::kGroupedMm);
  // The config check takes its names from the same list: every path is a valid train.grouped_path.
  EXPECT_EQ(grouped_path_names().size(), 9u);
  for (const auto& name : grouped_path_names()) {
    EXPECT_EQ(grouped_path_name(parse_grouped_path(name)), name);
    auto config = moelab::Config::defaults();
    config.apply_override("train.grouped_path=" + name);
    EXPECT_NO_THROW(config.validate()) << name;
  }
}

// The forward and the two gradients are chosen for separately (a kernel fast for one can be slow for
// another), each once, and the backward's choices give the reference's gradients. The forward's key
// is the one choices were saved under before the products were told apart.
TEST(GroupedMatmul, AutoChoosesForTheForwardAndEachGradientOnTheirOwn) {
  forget_grouped_paths();
  torch::manual_seed(8);
  const std::vector<int64_t> rows = {6, 0, 10, 8};
  auto x = torch::randn({24, 8}, torch::kFloat).requires_grad_(true);
  auto w = torch::randn({4, 8, 12}, torch::kFloat).requires_grad_(true);
  auto xr = x.detach().to(torch::kDouble).requires_grad_(true), wr = w.detach().to(torch::kDouble).requires_grad_(true);
  const auto probe = torch::randn({24, 12});
  (grouped_matmul(x, w, rows, GroupedPath::kAuto) * probe).sum().backward();
  (grouped_matmul_reference(xr, wr, rows) * probe.to(torch::kDouble)).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad().to(torch::kDouble), xr.grad(), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(w.grad().to(torch::kDouble), wr.grad(), 1e-5, 1e-5));
  const auto choices = grouped_path_choices();
  ASSERT_EQ(choices.size(), 3u);
  std::set<std::string> keys;
  for (const auto& choice : choices) {
    EXPECT_EQ(choice.shape.experts, 4);
    EXPECT_EQ(choice.shape.in_width, 8);  // the stored weight's widths, for every product
    EXPECT_EQ(choice.shape.out_width, 12);
    EXPECT_FALSE(choice.measured_ms.empty());
    EXPECT_NE(choice.path, GroupedPath::kAuto);
    keys.insert(choice.shape.key());
  }
  EXPECT_EQ(keys, (std::set<std::string>{"cpu Float E=4 I=8 O=12 rows=4", "cpu Float E=4 I=8 O=12 rows=4 product=input_grad",
                                         "cpu Float E=4 I=8 O=12 rows=4 product=weight_grad"}));
  // A second step measures nothing more.
  x.mutable_grad().reset();
  (grouped_matmul(x, w, rows, GroupedPath::kAuto) * probe).sum().backward();
  EXPECT_EQ(grouped_path_choices().size(), 3u);
  forget_grouped_paths();
}

namespace {

// kAuto's choice for one product, made afresh in this process (as a new process would).
moelab::GroupedChoice fresh_auto_choice(const torch::Tensor& x, const torch::Tensor& w,
                                        const std::vector<int64_t>& rows) {
  forget_grouped_paths();
  const auto out = grouped_matmul(x, w, rows, GroupedPath::kAuto);
  EXPECT_TRUE(torch::allclose(out, grouped_matmul_reference(x, w, rows), 1e-5, 1e-5));
  const auto choices = grouped_path_choices();
  EXPECT_EQ(choices.size(), 1u);
  return choices.empty() ? moelab::GroupedChoice{} : choices.front();
}

}  // namespace

TEST(GroupedPathCache, ASavedChoiceRulesLaterProcessesAndABadCacheIsMeasuredAgain) {
  moelab::testing::TempDir dir;
  const auto file = dir.file("nested/paths.json");
  set_grouped_path_cache(file);
  const auto x = torch::randn({64, 8});
  const auto w = torch::randn({4, 8, 8});
  const std::vector<int64_t> rows = {16, 16, 16, 16};
  const auto shape = grouped_shape_of(x, w, rows);
  const auto machine = grouped_path_machine(shape.device_type);

  const auto first = fresh_auto_choice(x, w, rows);
  EXPECT_FALSE(first.saved);
  EXPECT_GE(first.measured_ms.size(), 3u);
  auto cache = nlohmann::json::parse(moelab::testing::read_file(file));
  ASSERT_TRUE(cache["machines"][machine].contains(shape.key())) << cache.dump(2);
  EXPECT_EQ(cache["machines"][machine][shape.key()]["path"], grouped_path_name(first.path));

  // Whatever this process would measure now, the saved choice is the one taken.
  const auto other = first.path == GroupedPath::kPaddedBmm ? GroupedPath::kLoop : GroupedPath::kPaddedBmm;
  cache["machines"][machine][shape.key()]["path"] = grouped_path_name(other);
  moelab::testing::write_file(file, cache.dump());
  const auto second = fresh_auto_choice(x, w, rows);
  EXPECT_TRUE(second.saved);
  EXPECT_EQ(second.path, other);
  // A float32 choice says nothing about bf16 products of the same widths.
  EXPECT_NE(grouped_shape_of(x.to(torch::kBFloat16), w, rows).key(), shape.key());

  // A choice saved before one of today's candidates existed is measured again, so the new path is timed.
  cache = nlohmann::json::parse(moelab::testing::read_file(file));
  cache["machines"][machine][shape.key()]["measured_ms"].erase("loop");
  moelab::testing::write_file(file, cache.dump());
  EXPECT_FALSE(fresh_auto_choice(x, w, rows).saved);
  EXPECT_TRUE(fresh_auto_choice(x, w, rows).saved);

  // A saved path this build cannot run (the oracle is never a candidate) is measured again.
  cache["machines"][machine][shape.key()]["path"] = "reference";
  moelab::testing::write_file(file, cache.dump());
  EXPECT_FALSE(fresh_auto_choice(x, w, rows).saved);
  EXPECT_NE(moelab::testing::read_file(file).find(shape.key()), std::string::npos);

  // A damaged cache costs a warning and a measurement, and is written anew.
  moelab::testing::write_file(file, "{\"version\": 1, \"machines\": {\"trunc");
  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(fresh_auto_choice(x, w, rows).saved);
  const auto warning = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(warning.find("grouped-path cache"), std::string::npos) << warning;
  EXPECT_TRUE(fresh_auto_choice(x, w, rows).saved);

  // Without a cache every process measures.
  set_grouped_path_cache("");
  EXPECT_FALSE(fresh_auto_choice(x, w, rows).saved);
  forget_grouped_paths();
}
