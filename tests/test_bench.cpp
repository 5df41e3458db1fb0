// The pieces of `moelab bench` that are not timings: sampling counts, tables, the naive module loop.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/bench/bench_suite.h"
#include "moelab/bench/module_loop_moe.h"
#include "moelab/bench/timing.h"
#include "moelab/util/error.h"

using namespace moelab;

TEST(BenchTiming, InterleavesWarmupAndSamples) {
  std::vector<int> order;
  const auto ms = interleaved_median_ms({[&] { order.push_back(0); }, [&] { order.push_back(1); }},
                                        TimingOptions{/*warmup=*/1, /*samples=*/3});
  EXPECT_EQ(ms.size(), 2u);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 0, 1, 0, 1, 0, 1}));
  EXPECT_THROW(median_ms([] {}, TimingOptions{0, 0}), moelab::Error);
}

TEST(BenchSuite, MarkdownHasOneTablePerCaseWithEveryRow) {
  std::vector<nlohmann::json> rows = {
      {{"case", "layer"}, {"experts", 8}, {"k", 1}, {"bank", "ffn"}, {"ms", 12.5}, {"dense_ms", 10.0}, {"ratio_vs_dense", 1.25}},
      {{"case", "layer"}, {"experts", 64}, {"k", 2}, {"bank", "ffn"}, {"ms", 30.0}, {"dense_ms", 10.0}, {"ratio_vs_dense", 3.0}},
      {{"case", "naive"}, {"experts", 8}, {"k", 2}, {"ms", 90.0}, {"fast_ms", 30.0}, {"ratio_vs_fast", 3.0}}};
  const auto md = bench_markdown(rows);
  EXPECT_NE(md.find("### layer"), std::string::npos) << md;
  EXPECT_NE(md.find("### naive"), std::string::npos) << md;
  EXPECT_EQ(md.find("### weak_scaling"), std::string::npos) << md;
  EXPECT_NE(md.find("| 8 | 1 | ffn | 12.5 | 10.0 | 1.25 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| 64 | 2 | ffn | 30.0 | 10.0 | 3.00 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| 8 | 2 | 90.0 | 30.0 | 3.00 | - | - |"), std::string::npos) << md;  // missing keys print "-"
}

TEST(BenchSuite, RejectsUnknownSections) {
  BenchRequest request;
  request.sections = {"layer", "everything"};
  EXPECT_THROW(run_bench(request), moelab::Error);
}

// The newcomer's loop computes the same function as the grouped layer given the same weights.
TEST(ModuleLoopMoE, MatchesTheGroupedLayer) {
  torch::manual_seed(5);
  const auto options = MoELayerOptions(6, 4, 2, 5);  // noisy top-k; its noise is off in eval mode
  MoELayer layer(options);
  ModuleLoopMoE loop(options);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : layer->router->parameters()) p.normal_();  // zero-initialised gates would tie
    for (auto& item : loop->router->named_parameters()) item.value().copy_(layer->router->named_parameters()[item.key()]);
    for (int64_t e = 0; e < 4; ++e) {
      auto* up = loop->up[e]->as<torch::nn::Linear>();
      auto* down = loop->down[e]->as<torch::nn::Linear>();
      const auto& bank = layer->experts->named_parameters();
      up->weight.copy_(bank["w_in"][e].t());
      up->bias.copy_(bank["b_in"][e]);
      down->weight.copy_(bank["w_out"][e].t());
      down->bias.copy_(bank["b_out"][e]);
    }
  }
  layer->eval();
  loop->eval();
  const auto x = torch::randn({10, 6});
  EXPECT_TRUE(torch::allclose(layer(x).output, loop(x).output, 1e-5, 1e-5));
}

TEST(BenchSuite, AttentionSectionTimesBothWaysAtEveryShape) {
  BenchRequest request;
  request.sections = {"attention"};
  request.layer.timing = TimingOptions{/*warmup=*/0, /*samples=*/1};
  const auto result = run_bench(request);
  int rows = 0;
  for (const auto& row : result.rows) {
    if (row.value("case", "") != "attention") continue;
    ++rows;
    EXPECT_GT(row.value("ms", 0.0), 0.0);
    EXPECT_GT(row.value("matmul_ms", 0.0), 0.0);
    EXPECT_NEAR(row.value("speedup", 0.0), row.value("matmul_ms", 0.0) / row.value("ms", 1.0), 1e-9);
  }
  EXPECT_EQ(rows, 3);
  EXPECT_NE(result.markdown.find("### attention"), std::string::npos) << result.markdown;
}
