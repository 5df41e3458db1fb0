// The MoE layer against independent references: a dense FFN, and "run every expert, mask, sum".
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "grad_check.h"
#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/layers/dense_ffn.h"
#include "moelab/config/config.h"
#include "moelab/device/device.h"
#include "moelab/device/host_sync_counter.h"
#include "moelab/dispatch/grouped_matmul.h"
#include "moelab/dispatch/grouped_path.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/models/model_from_config.h"
#include "moelab/routing/noisy_topk_router.h"
#include "moelab/util/error.h"

#include <malloc.h>

using namespace moelab;

TEST(MoELayer, OneExpertTopOneEqualsDenseFfnInOutputsAndGradients) {
  torch::manual_seed(20);
  const int64_t d = 6, h = 10, n = 15;
  MoELayer moe(MoELayerOptions(d, /*num_experts=*/1, /*k=*/1, h));
  DenseFfn dense(DenseFfnOptions(d, h));
  auto bank = std::dynamic_pointer_cast<FfnExpertBank>(moe->experts);
  ASSERT_TRUE(bank);
  {
    torch::NoGradGuard no_grad;
    dense->up->weight.copy_(bank->w_in[0].t());
    dense->up->bias.copy_(bank->b_in[0]);
    dense->down->weight.copy_(bank->w_out[0].t());
    dense->down->bias.copy_(bank->b_out[0]);
  }
  moe->train();  // noise on: with one expert the gate is still exactly 1
  auto x1 = torch::randn({n, d}).requires_grad_(true);
  auto x2 = x1.detach().clone().requires_grad_(true);
  const auto probe = torch::randn({n, d});
  const auto out = moe(x1);
  const auto expected = dense(x2);
  EXPECT_TRUE(torch::allclose(out.output, expected, 1e-5, 1e-6));
  EXPECT_EQ(out.aux_loss.item<float>(), 0.0f);
  ((out.output * probe).sum() + out.aux_loss).backward();
  (expected * probe).sum().backward();
  EXPECT_TRUE(torch::allclose(x1.grad(), x2.grad(), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(bank->w_in.grad()[0], dense->up->weight.grad().t(), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(bank->b_in.grad()[0], dense->up->bias.grad(), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(bank->w_out.grad()[0], dense->down->weight.grad().t(), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(bank->b_out.grad()[0], dense->down->bias.grad(), 1e-5, 1e-6));
}

TEST(MoELayer, DispatchCombineEqualsRunEveryExpertMaskAndSum) {
  torch::manual_seed(21);
  const int64_t d = 5, h = 7, e = 6, k = 2, n = 40;
  MoELayer moe(MoELayerOptions(d, e, k, h));
  {
    torch::NoGradGuard no_grad;
    auto router = std::dynamic_pointer_cast<NoisyTopKRouter>(moe->router);
    router->w_gate.normal_(0, 1);
  }
  moe->eval();
  const auto x = torch::randn({n, d});
  const auto out = moe(x).output;
  // Naive: every expert on every token, weighted by the dense gate matrix (zero off the top-k).
  const auto gates = dense_gates(moe->router->route(x));                 // [N, E]
  const auto all = moe->experts->all_experts_reference(x);        // [N, E, D]
  const auto naive = (all * gates.unsqueeze(2)).sum(1);            // [N, D]
  EXPECT_TRUE(torch::allclose(out, naive, 1e-5, 1e-5));
  EXPECT_EQ((gates > 0).sum().item<int64_t>(), n * k);
}

namespace {
// Router (with noise and both balancing losses), dispatch, grouped expert products and combine,
// on inputs of the given scale, against finite differences.
void expect_whole_layer_gradients_match(const std::string& router_norm, double input_scale) {
  MoELayer moe(MoELayerOptions(4, /*num_experts=*/5, /*k=*/2, /*expert_hidden=*/6)
                   .balance(BalanceWeights{0.5, 0.5, 0.0, 0.0})
                   .router_norm(router_norm));
  moe->to(torch::kDouble);
  {
    torch::NoGradGuard no_grad;
    auto router = std::dynamic_pointer_cast<NoisyTopKRouter>(moe->router);
    router->w_gate.normal_(0, 0.5);
    router->w_noise.normal_(0, 0.5);
  }
  moe->train();
  auto x = (input_scale * torch::randn({10, 4}, torch::kDouble)).requires_grad_(true);
  const auto probe = torch::randn({10, 4}, torch::kDouble);
  auto loss = [&] {
    torch::manual_seed(7);
    const auto out = moe(x);
    return (out.output * probe).sum() + out.aux_loss;
  };
  std::vector<std::pair<std::string, torch::Tensor>> inputs = {{"x", x}};
  for (const auto& p : moe->named_parameters()) inputs.emplace_back(p.key(), p.value());
  moelab::testing::expect_gradients_match(loss, inputs);
}
}  // namespace

TEST(MoELayer, WholeLayerGradientsMatchFiniteDifferences) {
  torch::manual_seed(22);
  expect_whole_layer_gradients_match("none", 1.0);
}

// moe.router_norm = "rms": the router reads x / rms(x), so its logits ignore the input's scale and
// equal the router's own logits on the normalised rows; without it they scale with the input.
TEST(MoELayer, RmsRouterNormHidesTheInputScaleFromTheRouterOnly) {
  torch::manual_seed(23);
  const int64_t d = 8, n = 12;
  auto logits_of = [&](MoELayer& moe, const torch::Tensor& x) {
    torch::Tensor logits;
    moe->routing_observer = [&](const Routing& routing, const torch::Tensor&) { logits = routing.logits.detach(); };
    moe(x);
    return logits;
  };
  const auto x = torch::randn({n, d});
  for (const std::string norm : {"none", "rms"}) {
    torch::manual_seed(24);
    MoELayer moe(MoELayerOptions(d, /*num_experts=*/4, /*k=*/2, /*expert_hidden=*/6)
                     .router("topk")
                     .balance(BalanceWeights{})
                     .router_norm(norm));
    moe->eval();
    const auto small = logits_of(moe, 0.2 * x), large = logits_of(moe, 5.0 * x);
    ASSERT_TRUE(small.defined() && large.defined()) << norm;
    if (norm == "rms") {
      // Equal but for the 1e-5 added to the mean square (1e-5 / 0.04 of it at the small scale).
      EXPECT_TRUE(torch::allclose(small, large, 1e-3, 1e-5));
      const auto normalised = 0.2 * x * torch::rsqrt((0.2 * x).pow(2).mean(1, /*keepdim=*/true) + 1e-5);
      EXPECT_TRUE(torch::allclose(small, moe->router->route(normalised, {}).logits, 1e-5, 1e-6));
    } else {
      EXPECT_FALSE(torch::allclose(small, large, 1e-2, 1e-3));
    }
  }
  EXPECT_THROW(MoELayer(MoELayerOptions(d, 4, 2, 6).router_norm("layer")), Error);
}

TEST(MoELayer, RmsRouterNormGradientsMatchFiniteDifferences) {
  torch::manual_seed(25);
  expect_whole_layer_gradients_match("rms", 0.1);  // an LSTM output's scale
}

// input_rms: the root mean square of every input entry the layer saw, over batches of any size.
TEST(RoutingStats, InputRmsIsTheRootMeanSquareOfEveryBatchTogether) {
  torch::manual_seed(26);
  MoELayer moe(MoELayerOptions(6, 4, 2, 5).router("topk").balance(BalanceWeights{}));
  moe->eval();
  const auto a = 0.1 * torch::randn({7, 6}), b = 2.0 * torch::randn({3, 6});
  RoutingStatsAccumulator acc;
  acc.add(moe(a).stats);
  acc.add(moe(b).stats);
  const double expected = torch::cat({a, b}).pow(2).mean().sqrt().item<double>();
  EXPECT_NEAR(acc.input_rms(), expected, 1e-6 * expected);
  EXPECT_NEAR(acc.to_json().at("input_rms").get<double>(), expected, 1e-6 * expected);
  EXPECT_EQ(RoutingStatsAccumulator().input_rms(), 0.0);
}

// merged() sums two micro-batches of one step; a sum that only one side has would later be divided
// by both sides' tokens, so it is dropped rather than kept half-counted.
TEST(RoutingStats, MergedSumsBothBatchesAndDropsAOneSidedSum) {
  torch::manual_seed(27);
  MoELayer moe(MoELayerOptions(6, 4, 2, 5).router("topk").balance(BalanceWeights{}));
  moe->eval();
  const auto a = moe(0.5 * torch::randn({7, 6})).stats, b = moe(torch::randn({3, 6})).stats;
  ASSERT_TRUE(a.has_logits() && a.input_square_sum.defined());
  const auto both = merged(a, b);
  EXPECT_EQ(both.num_tokens, 10);
  EXPECT_TRUE(torch::allclose(both.assigned, a.assigned + b.assigned));
  EXPECT_TRUE(torch::allclose(both.logit_sums, a.logit_sums + b.logit_sums));
  EXPECT_NEAR(both.input_square_sum.item<double>(),
              a.input_square_sum.item<double>() + b.input_square_sum.item<double>(), 1e-9);
  auto bare = b;
  bare.logit_sums = torch::Tensor();
  bare.input_square_sum = torch::Tensor();
  for (const auto& m : {merged(a, bare), merged(bare, a)}) {
    EXPECT_EQ(m.num_tokens, 10);
    EXPECT_FALSE(m.has_logits());
    EXPECT_FALSE(m.input_square_sum.defined());
  }
}

TEST(MoELayer, CountsParametersFromItsTensors) {
  MoELayer moe(MoELayerOptions(8, 4, 2, 16));
  const int64_t per_expert = 8 * 16 + 16 + 16 * 8 + 8;
  const int64_t router = 2 * 8 * 4;
  EXPECT_EQ(moe->params_total(), 4 * per_expert + router);
  EXPECT_EQ(moe->params_active_per_token(), 2 * per_expert + router);
  EXPECT_EQ(moe->flops_per_token(), 2 * 8 * 4 + 2 * (4 * 8 * 16));
  // A normalised router input adds 3 FLOPs per feature and no parameters.
  MoELayer normed(MoELayerOptions(8, 4, 2, 16).router_norm("rms"));
  EXPECT_EQ(normed->flops_per_token(), moe->flops_per_token() + 3 * 8);
  EXPECT_EQ(normed->params_total(), moe->params_total());
}

TEST(MoELayer, CapacityFactorReportsDroppedTokens) {
  torch::manual_seed(23);
  MoELayer moe(MoELayerOptions(4, 4, 1, 8).capacity_factor(0.5));
  {
    torch::NoGradGuard no_grad;
    std::dynamic_pointer_cast<NoisyTopKRouter>(moe->router)->w_gate.select(1, 0).fill_(1.0);
  }
  moe->eval();
  // Positive inputs: expert 0 has the largest logit for every token; capacity is 2 of 16.
  const auto out = moe(torch::rand({16, 4}) + 0.1);
  EXPECT_EQ(out.stats.num_assignments, 16);
  EXPECT_EQ(out.stats.num_dropped, 14);
  RoutingStatsAccumulator acc;
  acc.add(out.stats);
  EXPECT_NEAR(acc.dropped_frac(), 14.0 / 16.0, 1e-12);
  EXPECT_NEAR(acc.max_mean_load(), 4.0, 1e-12);
}

// Issue 20: the process's memory stops growing after the first steps. The layer's buffers are
// tensors on glibc's heap, which tune_process_environment keeps (no mmap, no trimming), so the heap
// the first steps grow is the workspace every later step reuses; a buffer held across steps, a
// per-step cache entry or a leak would show as growth. Identical inputs give every step the same
// routing, hence the same block sizes.
// GCC says it builds with AddressSanitizer through __SANITIZE_ADDRESS__, clang 14 (scripts/test.sh's
// sanitizer build) only through __has_feature; its mallinfo2 then reports an empty heap.
#if defined(__SANITIZE_ADDRESS__)
#define MOELAB_TEST_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOELAB_TEST_UNDER_ASAN 1
#endif
#endif

// kAuto picks a path by timing it, so which path a run checked depended on the machine and its load;
// each path is held in turn, and a failure names its path. CI failed once (bf16, k = 1: the heap
// 64 MiB + 108 KiB larger after step 23 than after step 3) on a machine whose path this one, where
// every path passes, could not reproduce.
TEST(MoELayer, HeapStopsGrowingAfterTheFirstSteps) {
#if defined(MOELAB_TEST_UNDER_ASAN)
  GTEST_SKIP() << "AddressSanitizer replaces glibc's heap";
#elif !defined(__GLIBC__) || !__GLIBC_PREREQ(2, 33)
  GTEST_SKIP() << "needs glibc's mallinfo2";
#else
  const auto heap_bytes = [] {
    const auto info = mallinfo2();
    return static_cast<int64_t>(info.arena + info.hblkhd);
  };
  const auto in_use = [] { return static_cast<int64_t>(mallinfo2().uordblks); };
  struct PathGuard {
    GroupedPath saved = grouped_path();
    ~PathGuard() { set_grouped_path(saved); }
  } restore_path;
  for (const auto dtype : {torch::kFloat, torch::kBFloat16})
    for (const auto path : cpu_grouped_paths(dtype))
      for (const int64_t k : {1, 2}) {
        SCOPED_TRACE(torch::toString(dtype) + std::string(" ") + grouped_path_name(path) + " k = " + std::to_string(k));
        set_grouped_path(path);
        torch::manual_seed(24);
        MoELayer moe(MoELayerOptions(64, 32, k, 128).router("topk_mask").balance(BalanceWeights{0, 0, 0.01, 0}));
        moe->to(dtype);
        moe->train();
        const auto x = torch::randn({256, 64}).to(dtype).requires_grad_(true);
        const auto step = [&] {
          moe->zero_grad(/*set_to_none=*/true);
          x.mutable_grad().reset();
          auto out = moe(x);
          (out.output.sum() + out.aux_loss).backward();
        };
        for (int i = 0; i < 3; ++i) step();
        const int64_t used = in_use();
        std::vector<int64_t> heap = {heap_bytes()};
        ASSERT_GT(heap[0], 0) << "mallinfo2 reports no heap";
        for (int i = 0; i < 30; ++i) {
          step();
          heap.push_back(heap_bytes());
        }
        // A workspace that is not reused grows the heap step after step. The one late extension CI
        // saw (64 MiB of M_TOP_PAD plus a request, while the bytes in use stayed put) reads as
        // glibc's placement, not a leak: one is allowed, never in the last 10 of the 30 steps.
        int growths = 0;
        std::string sizes;
        for (size_t i = 1; i < heap.size(); ++i) {
          growths += heap[i] != heap[i - 1];
          sizes += " " + std::to_string(heap[i]);
        }
        EXPECT_LE(growths, 1) << "the heap after steps 3 to 33: " << heap[0] << sizes;
        EXPECT_EQ(heap.back(), heap[heap.size() - 11]) << "the heap after steps 3 to 33: " << heap[0] << sizes;
        // Up to ~3 KiB come and go in LibTorch's and glibc's own small caches (measured); a step that
        // kept one of its tensors would keep 64 KiB (the routed rows) to 1 MiB (a weight gradient).
        EXPECT_LT(std::abs(in_use() - used), 16 << 10) << "a step kept memory it did not keep before";
      }
#endif
}

// The diagnostics every MoE paper reports (issue 19 item 9), on hand-worked loads.
TEST(RoutingStats, MaxVioPerBatchAndGlobalAndTheLoadSharesOfTheExtremes) {
  auto batch = [](std::vector<double> assigned, int64_t tokens) {
    RoutingStats stats;
    stats.assigned = torch::tensor(assigned, torch::kFloat64);
    stats.importance = stats.assigned.clone();
    stats.num_tokens = tokens;
    for (double a : assigned) stats.num_assignments += static_cast<int64_t>(a);
    return stats;
  };
  RoutingStatsAccumulator acc;
  acc.add(batch({3, 1}, 2));  // MaxVio 3 / 2 - 1 = 0.5
  acc.add(batch({1, 3}, 2));  // 0.5 again
  EXPECT_NEAR(acc.maxvio_batch(), 0.5, 1e-12);
  EXPECT_NEAR(acc.maxvio(), 0.0, 1e-12);  // together they are even
  EXPECT_NEAR(acc.experts_per_token(), 2.0, 1e-12);
  EXPECT_NEAR(acc.top_load_share(), 0.5, 1e-12);  // 20 % of 2 experts rounds to 0: at least one
  RoutingStatsAccumulator five;
  five.add(batch({5, 1, 1, 1, 2}, 5));  // mean 2: MaxVio 1.5; one expert is 20 %
  EXPECT_NEAR(five.maxvio_batch(), 1.5, 1e-12);
  EXPECT_NEAR(five.maxvio(), 1.5, 1e-12);
  EXPECT_NEAR(five.top_load_share(), 0.5, 1e-12);
  EXPECT_NEAR(five.bottom_load_share(), 0.1, 1e-12);
  const auto json = five.to_json();
  for (const char* key : {"maxvio", "maxvio_batch", "experts_per_token", "top20_load", "bottom20_load"})
    EXPECT_TRUE(json.contains(key)) << key;
}

// Fine-grained experts (issue 19 item 3): m times the experts at 1/m the width and m times k.
TEST(FineGrainedExperts, SplitExpertsKeepTheParametersAndExpertFlopsOfTheCoarseLayer) {
  auto options_at = [](int64_t granularity) {
    Config config = Config::defaults();
    for (const std::string& assignment :
         std::vector<std::string>{"moe.experts=4", "moe.k=2", "moe.expert_hidden=24", "moe.router=topk_mask", "moe.balance.load=0", "moe.shared_experts=1",
          "moe.granularity=" + std::to_string(granularity)})
      config.apply_override(assignment);
    config.validate();
    return moe_layer_options(config, 8);
  };
  const auto coarse = options_at(1), fine = options_at(4);
  EXPECT_EQ(coarse.num_experts(), 4);
  EXPECT_EQ(fine.num_experts(), 16);
  EXPECT_EQ(fine.k(), 8);
  EXPECT_EQ(fine.expert_hidden(), 6);
  MoELayer coarse_layer(coarse), fine_layer(fine);
  // An FFN expert is W1 [d, h], b1 [h], W2 [h, d], b2 [d]: only the output biases multiply.
  EXPECT_EQ(fine_layer->experts->params_total() - coarse_layer->experts->params_total(), (16 - 4) * 8);
  const int64_t router_difference = 2 * 8 * (16 - 4);
  EXPECT_EQ((fine_layer->flops_per_token() - fine_layer->shared->flops_per_token()) -
                (coarse_layer->flops_per_token() - coarse_layer->shared->flops_per_token()),
            router_difference);
  // The shared expert counts fine experts: one of width 6.
  EXPECT_EQ(fine_layer->shared->params_total(), 8 * 6 + 6 + 6 * 8 + 8);
  Config bad = Config::defaults();
  bad.apply_override("moe.expert_hidden=25");
  bad.apply_override("moe.granularity=4");
  EXPECT_THROW(bad.validate(), moelab::Error);
}

// Global-batch balancing over micro-batches (issue 19 item 2): after start_step(n), each pass's
// importance and switch losses read the sums of the step's passes so far, so the last one's value is
// that of the whole step's tokens at once; a new step starts over.
TEST(GlobalBalance, MicroBatchesPoolTheirSumsWithinAStepOnly) {
  torch::manual_seed(60);
  MoELayer moe(MoELayerOptions(4, 4, 2, 8).router("topk_mask").global_balance(true).balance(BalanceWeights{1.0, 0, 0.1, 0}));
  const auto first = torch::randn({10, 4}), second = torch::randn({6, 4});
  auto terms_of_whole = [&] {
    const auto routing = moe->router->route(torch::cat({first, second}));
    return balance_losses(routing, moe->options.balance()).terms;
  }();
  moe->train();
  moe->start_step(2);
  const auto alone = balance_losses(moe->router->route(first), moe->options.balance()).terms;
  const auto a = moe(first);
  EXPECT_NEAR(a.loss_terms.at("importance").item<double>(), alone.at("importance").item<double>(), 1e-6);
  const auto b = moe(second);
  for (const char* term : {"importance", "switch"})
    EXPECT_NEAR(b.loss_terms.at(term).item<double>(), terms_of_whole.at(term).item<double>(), 1e-5) << term;
  moe->start_step(2);  // the next step forgets the last one's sums
  EXPECT_NEAR(moe(first).loss_terms.at("importance").item<double>(), alone.at("importance").item<double>(), 1e-6);
  // The value is the pooled one, the gradient reaches only this pass's own share, scaled by n = 2.
  moe->start_step(2);
  moe(first);
  auto x = second.clone().requires_grad_(true);
  torch::autograd::grad({moe(x).aux_loss}, {x});  // differentiable through the pooled sums
  EXPECT_THROW(moe->start_step(0), moelab::Error);
}

// Issue 20: an MoE forward on the GPU waits for it once (the per-expert counts its plan needs on
// the host); balancing losses and routing statistics stay on the device and the backward never
// waits. Runs where a GPU is visible (scripts/gpu-check.sh).
TEST(MoELayerCuda, ForwardWaitsForTheGpuOnceAndBackwardNever) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (" << libtorch_description() << ")";
  const torch::Device gpu(torch::kCUDA);
  {  // the counter itself: one .item() is one wait
    const auto ones = torch::ones({4}, gpu);
    HostSyncCounter counter;
    EXPECT_EQ(ones.sum().item<float>(), 4.0f);
    ASSERT_EQ(counter.count(), 1);
  }
  struct Case {
    std::string router;
    int64_t k;
    BalanceWeights balance;
    double capacity_factor;
  };
  for (const auto& c : {Case{"noisy_topk", 2, BalanceWeights{0.1, 0.1, 0, 0}, 0.0},
                        Case{"topk_mask", 2, BalanceWeights{0, 0, 0.01, 0.001}, 0.0},
                        Case{"switch", 1, BalanceWeights{0, 0, 0.01, 0.001}, 1.25},
                        Case{"top2_random", 2, BalanceWeights{0, 0, 0.01, 0}, 2.0}}) {
    SCOPED_TRACE(c.router);
    torch::manual_seed(3);
    MoELayer moe(MoELayerOptions(16, 8, c.k, 32).router(c.router).balance(c.balance).capacity_factor(c.capacity_factor));
    moe->to(gpu);
    moe->train();
    const auto x = torch::randn({64, 16}, gpu).requires_grad_(true);
    {  // the first call chooses its paths and makes its buffers
      auto out = moe(x);
      (out.output.sum() + out.aux_loss).backward();
    }
    HostSyncCounter counter;
    auto out = moe(x);
    EXPECT_EQ(counter.count(), 1) << "forward";
    (out.output.sum() + out.aux_loss).backward();
    EXPECT_EQ(counter.count(), 1) << "forward and backward";
  }
}
