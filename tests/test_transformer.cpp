// The Transformer language model against independent references: attention kernels against each
// other and against a per-query loop, RoPE's relative-position property, cached generation against
// recomputation, a one-expert MoE Transformer against the dense one, and causality (no position
// sees a later token) for every router on both backbones.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "moelab/config/config.h"
#include "moelab/device/precision.h"
#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/layers/causal_self_attention.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/models/incremental_decoder.h"
#include "moelab/models/model_from_config.h"
#include "moelab/models/transformer_language_model.h"
#include "moelab/util/blas_env.h"
#include "test_util.h"

using namespace moelab;

namespace {

// Softmax over the keys query i may see (positions <= first + i), one query at a time.
torch::Tensor attend_by_loop(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const int64_t t = q.size(2), keys = k.size(2), first = keys - t;
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i < t; ++i) {
    const auto visible_k = k.narrow(2, 0, first + i + 1), visible_v = v.narrow(2, 0, first + i + 1);
    const auto scores = torch::matmul(q.narrow(2, i, 1), visible_k.transpose(-2, -1)) / std::sqrt(double(q.size(3)));
    rows.push_back(torch::matmul(torch::softmax(scores, -1), visible_v));
  }
  return torch::cat(rows, 2);
}

Config transformer_config(std::vector<std::string> overrides) {
  auto config = Config::defaults();
  for (const char* assignment :
       {"model.arch=transformer", "model.hidden=16", "model.heads=2", "model.layers=2", "model.context=8",
        "model.dropout=0.0", "model.tie_weights=true", "moe.experts=4", "moe.k=2", "moe.expert_hidden=12"})
    config.apply_override(assignment);
  for (const auto& assignment : overrides) config.apply_override(assignment);
  return config;
}

}  // namespace

TEST(Attention, PlainKernelEqualsAPerQueryLoop) {
  torch::manual_seed(3);
  for (const auto& [queries, keys] : std::vector<std::pair<int64_t, int64_t>>{{6, 6}, {3, 9}, {1, 5}}) {
    const auto q = torch::randn({2, 3, queries, 4}, torch::kFloat64);
    const auto k = torch::randn({2, 3, keys, 4}, torch::kFloat64), v = torch::randn({2, 3, keys, 4}, torch::kFloat64);
    EXPECT_TRUE(torch::allclose(attend(q, k, v, AttentionKernel::kPlain), attend_by_loop(q, k, v), 1e-10, 1e-12))
        << queries << " queries, " << keys << " keys";
  }
}

TEST(Attention, FusedKernelEqualsThePlainOneInValuesAndGradients) {
  if (!fused_attention_available()) GTEST_SKIP() << "this LibTorch has no scaled_dot_product_attention";
  torch::manual_seed(4);
  for (const auto& [queries, keys] : std::vector<std::pair<int64_t, int64_t>>{{7, 7}, {3, 10}, {1, 10}}) {
    SCOPED_TRACE(std::to_string(queries) + " queries, " + std::to_string(keys) + " keys");
    const auto q = torch::randn({2, 3, queries, 8}).requires_grad_(true);
    const auto k = torch::randn({2, 3, keys, 8}).requires_grad_(true), v = torch::randn({2, 3, keys, 8}).requires_grad_(true);
    const auto probe = torch::randn({2, 3, queries, 8});
    const auto fused = attend(q, k, v, AttentionKernel::kFused);
    const auto fused_grads = torch::autograd::grad({(fused * probe).sum()}, {q, k, v});
    const auto plain = attend(q, k, v, AttentionKernel::kPlain);
    const auto plain_grads = torch::autograd::grad({(plain * probe).sum()}, {q, k, v});
    EXPECT_TRUE(torch::allclose(fused, plain, 1e-5, 1e-5));
    for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(torch::allclose(fused_grads[i], plain_grads[i], 1e-4, 1e-5)) << i;
  }
}

TEST(Attention, RotaryPositionsKeepNormsAndDependOnlyOnTheOffset) {
  torch::manual_seed(5);
  const auto q = torch::randn({1, 1, 1, 8}, torch::kFloat64), k = torch::randn({1, 1, 1, 8}, torch::kFloat64);
  auto score = [&](int64_t query_position, int64_t key_position) {
    return (rotate_positions(q, query_position) * rotate_positions(k, key_position)).sum().item<double>();
  };
  EXPECT_NEAR(score(7, 3), score(104, 100), 1e-9);
  EXPECT_NEAR(score(3, 3), (q * k).sum().item<double>(), 1e-9);
  EXPECT_GT(std::abs(score(7, 3) - score(3, 3)), 1e-6);
  EXPECT_NEAR(rotate_positions(q, 57).norm().item<double>(), q.norm().item<double>(), 1e-9);
}

TEST(Transformer, CachedGenerationEqualsRecomputationAcrossTheContextWindow) {
  for (const std::string positions : {"learned", "rope"}) {
    SCOPED_TRACE(positions);
    torch::manual_seed(6);
    const auto config = transformer_config({"model.positions=" + positions, "moe.router=topk", "moe.balance.load=0"});
    auto model = make_language_model(config, 30);
    model->eval();
    IncrementalDecoder cached(model, /*use_cache=*/true), recomputed(model, /*use_cache=*/false);
    // A prompt of 3, then single tokens up to 14 in all: past the context of 8.
    std::vector<std::vector<int64_t>> feeds = {{1, 2, 3}};
    for (int64_t i = 0; i < 11; ++i) feeds.push_back({(5 * i + 4) % 30});
    for (size_t i = 0; i < feeds.size(); ++i) {
      const auto a = cached.feed(feeds[i]), b = recomputed.feed(feeds[i]);
      EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-6)) << "feed " << i;
    }
  }
}

TEST(Transformer, OneExpertMoEEqualsTheDenseTransformerInOutputsAndGradients) {
  torch::manual_seed(7);
  const auto dense_config = transformer_config({"moe.experts=0", "model.ffn_hidden=12"});
  const auto moe_config = transformer_config({"moe.experts=1", "moe.k=1", "moe.every=1", "moe.balance.importance=0",
                                              "moe.balance.load=0"});
  auto dense = make_language_model(dense_config, 20);
  auto moe = make_language_model(moe_config, 20);
  {
    torch::NoGradGuard no_grad;
    auto targets = moe->named_parameters();
    for (const auto& item : dense->named_parameters()) {
      const auto& name = item.key();
      const auto ffn = name.find(".dense.");
      if (ffn == std::string::npos) {
        targets[name].copy_(item.value());
        continue;
      }
      auto& block = *std::static_pointer_cast<TransformerLanguageModelImpl>(moe)->blocks[std::stoul(name.substr(7))];
      auto bank = std::dynamic_pointer_cast<FfnExpertBank>(block.moe->experts);
      ASSERT_TRUE(bank);
      const auto part = name.substr(ffn + 7);
      if (part == "up.weight") bank->w_in[0].copy_(item.value().t());
      if (part == "up.bias") bank->b_in[0].copy_(item.value());
      if (part == "down.weight") bank->w_out[0].copy_(item.value().t());
      if (part == "down.bias") bank->b_out[0].copy_(item.value());
    }
  }
  const auto tokens = torch::randint(20, {6, 3}, torch::kInt64), targets = torch::randint(20, {6, 3}, torch::kInt64);
  auto dense_out = dense->forward(tokens, {});
  auto moe_out = moe->forward(tokens, {});
  EXPECT_TRUE(torch::allclose(moe_out.features, dense_out.features, 1e-5, 1e-5));
  EXPECT_EQ(moe_out.routing.size(), 2u);
  (moe->loss(moe_out.features, targets) + moe_out.aux_loss).backward();
  dense->loss(dense_out.features, targets).backward();
  auto moe_parameters = moe->named_parameters();
  int compared = 0;
  for (const auto& item : dense->named_parameters()) {
    if (item.key().find(".dense.") != std::string::npos) continue;
    EXPECT_TRUE(torch::allclose(moe_parameters[item.key()].grad(), item.value().grad(), 1e-4, 1e-6)) << item.key();
    ++compared;
  }
  EXPECT_GT(compared, 10);
  auto& first_block = *std::static_pointer_cast<TransformerLanguageModelImpl>(moe)->blocks[0];
  auto bank = std::dynamic_pointer_cast<FfnExpertBank>(first_block.moe->experts);
  auto& dense_block = *std::static_pointer_cast<TransformerLanguageModelImpl>(dense)->blocks[0];
  EXPECT_TRUE(torch::allclose(bank->w_in.grad()[0], dense_block.dense->up->weight.grad().t(), 1e-4, 1e-6));
  EXPECT_TRUE(torch::allclose(bank->w_out.grad()[0], dense_block.dense->down->weight.grad().t(), 1e-4, 1e-6));
}

TEST(Transformer, MoEEveryNthBlockAndOneRoutingEntryPerMoELayer) {
  torch::manual_seed(8);
  auto model = make_language_model(transformer_config({"model.layers=4", "moe.every=2"}), 20);
  const auto layers = model->moe_layers();
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_EQ(layers[0].name, "blocks.1.moe");
  EXPECT_EQ(layers[1].name, "blocks.3.moe");
  const auto out = model->forward(torch::randint(20, {8, 2}, torch::kInt64), {});
  EXPECT_EQ(out.routing.size(), 2u);
  EXPECT_EQ(out.features.sizes(), (std::vector<int64_t>{8, 2, 16}));
  // Costs: a row per block part, the MoE rows counting the experts a token uses.
  int moe_rows = 0;
  for (const auto& row : model->costs()) moe_rows += row.name.find(".moe") != std::string::npos;
  EXPECT_EQ(moe_rows, 2);
}

namespace {

// Log-probabilities of column `column` at positions 0..t (rows t' * B + column of [T*B, V]).
torch::Tensor prefix_log_probs(LanguageModelImpl& model, const torch::Tensor& tokens, int64_t column, int64_t t) {
  torch::NoGradGuard no_grad;
  const auto all = model.log_probs(model.forward(tokens, {}).features);
  const int64_t columns = tokens.size(1);
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i <= t; ++i) rows.push_back(all[i * columns + column]);
  return torch::stack(rows);
}

}  // namespace

TEST(Causality, NoPositionSeesALaterTokenWithAnyRouterOnEitherBackbone) {
  const int64_t vocab = 25, t = 3, column = 1;
  auto cases = moelab::testing::router_settings();
  // Capacities small enough that experts overflow: drops must go by earlier tokens only.
  cases["noisy_topk, weight drops"] = {"moe.router=noisy_topk", "moe.capacity_factor=0.5", "moe.capacity_drop=weight"};
  cases["topk, position drops"] = {"moe.router=topk", "moe.balance.load=0", "moe.capacity_factor=0.5"};
  cases["topk_mask, priority drops, null experts"] = {"moe.router=topk_mask", "moe.balance.load=0",
                                                      "moe.capacity_factor=0.5", "moe.capacity_drop=priority",
                                                      "moe.null_experts=2"};
  for (const std::string arch : {"lstm", "transformer"}) {
    for (const auto& [router, settings] : cases) {
      SCOPED_TRACE(arch + " / " + router);
      torch::manual_seed(9);
      auto config = arch == "lstm" ? Config::defaults() : transformer_config({});
      if (arch == "lstm")
        for (const char* assignment : {"model.embed=16", "model.hidden=16", "moe.experts=4", "moe.k=2",
                                       "moe.expert_hidden=12", "model.dropout=0.0"})
          config.apply_override(assignment);
      if (router.find(',') == std::string::npos) config.apply_override("moe.router=" + router);
      for (const auto& s : settings) config.apply_override(s);
      auto model = make_language_model(config, vocab);
      model->eval();
      const auto tokens = torch::randint(vocab, {8, 3}, torch::kInt64);
      auto changed = tokens.clone();
      changed.narrow(0, t + 1, 8 - t - 1).select(1, column).random_(vocab);
      EXPECT_TRUE(torch::allclose(prefix_log_probs(*model, tokens, column, t),
                                  prefix_log_probs(*model, changed, column, t), 1e-5, 1e-6));
    }
  }
}

TEST(Causality, TheLeakageCheckCatchesWindowWideRoutingInANonCausalLayer) {
  // The same check on one MoE layer: expert choice and weight-priority drops do let a position's
  // output depend on later rows unless the layer is told it is causal. Rows are [T*B] in time order.
  const int64_t t_len = 8, columns = 3, t = 3, column = 1, d = 8;
  for (const std::string router : {"expert_choice", "noisy_topk"}) {
    SCOPED_TRACE(router);
    for (const bool causal : {false, true}) {
      torch::manual_seed(10);
      auto options = MoELayerOptions(d, 4, 2, 6).router(router).capacity_factor(0.5).causal(causal).balance(
          BalanceWeights{0.1, router == "noisy_topk" ? 0.1 : 0.0, 0.0, 0.0});
      if (router == "noisy_topk") options.capacity_drop(DropPolicy::kWeight);
      MoELayer moe(options);
      moe->eval();
      {
        torch::NoGradGuard no_grad;  // noisy top-k starts with a zero gate: make the weights differ
        for (auto& p : moe->router->parameters()) p.normal_(0.0, 0.3);
      }
      const auto x = torch::randn({t_len * columns, d});
      auto changed = x.clone();
      bool any_difference = false;
      for (int trial = 0; trial < 20 && !any_difference; ++trial) {
        for (int64_t i = t + 1; i < t_len; ++i) changed[i * columns + column].normal_();
        torch::NoGradGuard no_grad;
        const auto a = moe(x).output, b = moe(changed).output;
        for (int64_t i = 0; i <= t; ++i)
          any_difference |= !torch::allclose(a[i * columns + column], b[i * columns + column], 1e-6, 1e-7);
      }
      EXPECT_EQ(any_difference, !causal) << (causal ? "causal" : "non-causal");
    }
  }
}

TEST(Precision, Bf16RunsTheExpertsInBfloat16AndKeepsTheRouterInFloat32) {
  torch::manual_seed(11);
  MoELayer moe(MoELayerOptions(16, 4, 2, 24).router("topk").balance(BalanceWeights{0.1, 0.0, 0.01, 0.001}));
  const auto x = torch::randn({32, 16});
  const auto reference_routing = moe->router->route(x);
  const auto reference = moe(x);
  const LowerPrecisionScope lower(torch::kCPU, torch::kBFloat16);
  const auto routing = moe->router->route(x);
  EXPECT_EQ(routing.logits.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(routing.logits, reference_routing.logits));
  EXPECT_TRUE(torch::equal(routing.expert_index, reference_routing.expert_index));
  auto out = moe(x);
  EXPECT_EQ(out.aux_loss.scalar_type(), torch::kFloat32);
  EXPECT_DOUBLE_EQ(out.aux_loss.item<double>(), reference.aux_loss.item<double>());
  // The experts' products ran in bfloat16: close to float32, not equal to it.
  const auto output = out.output.to(torch::kFloat32);
  EXPECT_FALSE(torch::equal(output, reference.output));
  EXPECT_TRUE(torch::allclose(output, reference.output, 5e-2, 5e-2));
  (output.sum() + out.aux_loss).backward();
  int with_gradient = 0;
  for (const auto& p : moe->parameters()) {
    EXPECT_EQ(p.scalar_type(), torch::kFloat32);
    if (!p.grad().defined()) continue;
    EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32);
    ++with_gradient;
  }
  EXPECT_GE(with_gradient, 5);
}

TEST(Precision, WarnsWhereBf16IsEmulated) {
  // Without avx512_bf16 a bf16 run is many times slower than a float32 one: the trainer says so.
  const bool emulated = !detect_cpu_features().avx512_bf16;
  EXPECT_EQ(slow_precision_warning(torch::kCPU, torch::kBFloat16).empty(), !emulated);
  if (emulated) {
    EXPECT_NE(slow_precision_warning(torch::kCPU, torch::kBFloat16).find("avx512_bf16"), std::string::npos);
  }
  EXPECT_EQ(slow_precision_warning(torch::kCPU, std::nullopt), "");
  EXPECT_EQ(slow_precision_warning(torch::Device(torch::kCUDA, 0), torch::kBFloat16), "");
}
