// The MoE layer against independent references: a dense FFN, and "run every expert, mask, sum".
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "grad_check.h"
#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/layers/dense_ffn.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/routing/noisy_topk_router.h"

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

TEST(MoELayer, WholeLayerGradientsMatchFiniteDifferences) {
  // Router (with noise and both balancing losses), dispatch, grouped expert products and combine.
  torch::manual_seed(22);
  MoELayer moe(MoELayerOptions(4, /*num_experts=*/5, /*k=*/2, /*expert_hidden=*/6)
                   .balance(BalanceWeights{0.5, 0.5, 0.0, 0.0}));
  moe->to(torch::kDouble);
  {
    torch::NoGradGuard no_grad;
    auto router = std::dynamic_pointer_cast<NoisyTopKRouter>(moe->router);
    router->w_gate.normal_(0, 0.5);
    router->w_noise.normal_(0, 0.5);
  }
  moe->train();
  auto x = torch::randn({10, 4}, torch::kDouble).requires_grad_(true);
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

TEST(MoELayer, CountsParametersFromItsTensors) {
  MoELayer moe(MoELayerOptions(8, 4, 2, 16));
  const int64_t per_expert = 8 * 16 + 16 + 16 * 8 + 8;
  const int64_t router = 2 * 8 * 4;
  EXPECT_EQ(moe->params_total(), 4 * per_expert + router);
  EXPECT_EQ(moe->params_active_per_token(), 2 * per_expert + router);
  EXPECT_EQ(moe->flops_per_token(), 2 * 8 * 4 + 2 * (4 * 8 * 16));
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
