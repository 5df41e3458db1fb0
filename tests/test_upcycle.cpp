// Upcycling a dense model into MoE models: function preserved where the decomposition is exact,
// reconstruction errors reported as measured, bad sources refused.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/config/config.h"
#include "moelab/models/model_from_config.h"
#include "moelab/train/upcycle.h"
#include "moelab/util/error.h"

using namespace moelab;

namespace {

constexpr int64_t kVocab = 40;

// D = 16, dense FFN width k * expert_hidden = 2 * 12 = 24.
Config dense_config() {
  Config config = Config::defaults();
  for (const char* assignment :
       {"model.embed=16", "model.hidden=16", "model.softmax=full", "moe.layer=dense", "moe.k=2",
        "moe.expert_hidden=12", "model.dropout=0.0"})
    config.apply_override(assignment);
  return config;
}

LstmLanguageModel trained_looking_dense(const Config& config) {
  torch::manual_seed(70);
  auto model = build_language_model(config, kVocab);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) p.normal_(0, 0.3);  // no structure a decomposition could exploit
  model->eval();
  return model;
}

torch::Tensor features(LanguageModelImpl& model, const torch::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  model.eval();
  return model.forward(tokens, {}).features;
}

}  // namespace

TEST(Upcycle, ExactBanksKeepTheDenseFunction) {
  const auto source_config = dense_config();
  auto source = trained_looking_dense(source_config);
  const auto tokens = torch::randint(0, kVocab, {7, 3}, torch::kInt64);
  const auto expected = features(*source, tokens);
  struct Case {
    std::string bank;
    std::vector<std::string> overrides;
  };
  // Full rank (min(16, 24) = 16) for low_rank, full bond for mpo: no truncation anywhere.
  const std::vector<Case> cases = {
      {"ffn", {}},
      {"ffn", {"moe.router=topk_mask", "moe.k=3", "moe.balance.load=0"}},
      {"low_rank", {"moe.rank=16"}},
      {"mpo", {"moe.model_factors=[2,4,2]", "moe.hidden_factors=[2,6,2]", "moe.bond=1000"}},
      {"lora", {"moe.rank=4"}},
      {"tensor_train", {"moe.rank=4", "moe.model_factors=[4,4]", "moe.hidden_factors=[4,6]"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.bank);
    const auto target = upcycled_config(source_config, /*experts=*/4, c.bank, c.overrides);
    EXPECT_EQ(target.get_int("moe.expert_hidden"), 24);
    auto result = upcycle_model(*source, source_config, target, kVocab);
    EXPECT_TRUE(torch::allclose(features(*result.model, tokens), expected, 1e-4, 1e-5));
    for (const char* matrix : {"w_in", "w_out"})
      EXPECT_LT(result.reconstruction[matrix]["relative_error"].get<double>(), 1e-5);
  }
}

TEST(Upcycle, TruncatedDecompositionsReportTheErrorTheyMake) {
  const auto source_config = dense_config();
  auto source = trained_looking_dense(source_config);
  const auto dense = dense_weights_of(*source, source_config);
  for (const auto& [bank, overrides] : std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"low_rank", {"moe.rank=5"}},
           {"mpo", {"moe.model_factors=[2,4,2]", "moe.hidden_factors=[2,6,2]", "moe.bond=3"}}}) {
    SCOPED_TRACE(bank);
    const auto target = upcycled_config(source_config, 4, bank, overrides);
    auto result = upcycle_model(*source, source_config, target, kVocab);
    for (const char* matrix : {"w_in", "w_out"}) {
      const double measured = result.reconstruction[matrix]["relative_error"].get<double>();
      EXPECT_GT(measured, 0.05) << matrix;  // truncation of a random matrix loses a visible part
      EXPECT_NEAR(measured, result.reconstruction[matrix]["predicted"].get<double>(), 1e-4) << matrix;
    }
  }
}

TEST(Upcycle, OneExpertFfnMoeIsASourceToo) {
  auto config = dense_config();
  config.apply_override("moe.layer=moe");
  config.apply_override("moe.experts=1");
  config.apply_override("moe.k=1");
  torch::manual_seed(71);
  auto source = build_language_model(config, kVocab);
  const auto dense = dense_weights_of(*source, config);
  EXPECT_EQ(dense.w_in.sizes(), (std::vector<int64_t>{16, 12}));
}

TEST(Upcycle, RefusesModelsWithoutADenseFfn) {
  auto config = dense_config();
  config.apply_override("moe.layer=moe");
  config.apply_override("moe.experts=4");
  auto moe = build_language_model(config, kVocab);
  EXPECT_THROW(dense_weights_of(*moe, config), Error);
  auto deep_config = dense_config();
  deep_config.apply_override("moe.layer=deep");  // several hidden layers: no single FFN to copy
  EXPECT_THROW(dense_weights_of(*build_language_model(deep_config, kVocab), deep_config), Error);
  config.apply_override("moe.experts=0");
  auto lstm = build_language_model(config, kVocab);
  try {
    dense_weights_of(*lstm, config);
    FAIL() << "a plain LSTM has no FFN to upcycle";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("plain LSTM"), std::string::npos) << error.what();
  }
  EXPECT_THROW(upcycled_config(dense_config(), 0, "ffn", {}), Error);
  EXPECT_THROW(upcycled_config(dense_config(), 4, "mlp", {}), Error);
  // shared_projection has no upcycling rule.
  const auto target = upcycled_config(dense_config(), 4, "shared_projection", {"moe.rank=4"});
  auto source = trained_looking_dense(dense_config());
  EXPECT_THROW(upcycle_model(*source, dense_config(), target, kVocab), Error);
}

namespace {

// A dense Transformer (D = 16, FFN width 24 in every block) with weights that hold no structure.
Config dense_transformer_config() {
  Config config = Config::defaults();
  for (const char* assignment :
       {"model.arch=transformer", "model.hidden=16", "model.heads=2", "model.layers=4", "model.context=8",
        "model.ffn_hidden=24", "model.dropout=0.0", "model.tie_weights=true", "moe.experts=0"})
    config.apply_override(assignment);
  return config;
}

}  // namespace

TEST(Upcycle, TransformerBlocksBecomeMoEBlocksThatKeepTheDenseFunction) {
  const auto source_config = dense_transformer_config();
  torch::manual_seed(72);
  auto source = make_language_model(source_config, kVocab);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : source->parameters()) p.normal_(0, 0.3);
  }
  const auto tokens = torch::randint(0, kVocab, {7, 3}, torch::kInt64);
  const auto expected = features(*source, tokens);
  // Identical experts under renormalised top-2 gates (sparse upcycling), in every other block; and
  // MPO experts with a full bond (MPOE applied to the pre-trained FFNs), in every block.
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"ffn", {"moe.router=topk_mask", "moe.balance.load=0", "moe.every=2"}},
      {"mpo", {"moe.model_factors=[2,4,2]", "moe.hidden_factors=[2,6,2]", "moe.bond=1000"}},
  };
  for (const auto& [bank, overrides] : cases) {
    SCOPED_TRACE(bank);
    const auto target = upcycled_config(source_config, /*experts=*/4, bank, overrides);
    EXPECT_EQ(target.get_int("moe.expert_hidden"), 24);
    EXPECT_EQ(target.get_int("model.ffn_hidden"), 24);
    auto result = upcycle_model(*source, source_config, target, kVocab);
    const size_t expected_layers = bank == "ffn" ? 2 : 4;
    ASSERT_EQ(result.model->moe_layers().size(), expected_layers);
    EXPECT_EQ(result.reconstruction.size(), expected_layers);
    EXPECT_TRUE(torch::allclose(features(*result.model, tokens), expected, 1e-4, 1e-5));
  }
}
