// Expert banks against explicit dense reconstructions of their weights, with gradient checks and
// parameter counts against closed-form formulas.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "grad_check.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/experts/lora_expert_bank.h"
#include "moelab/experts/low_rank_expert_bank.h"
#include "moelab/experts/mpo_expert_bank.h"
#include "moelab/experts/tensor_train_expert_bank.h"
#include "moelab/util/error.h"

using namespace moelab;

namespace {

constexpr int64_t kDim = 6, kHidden = 8, kExperts = 4, kRank = 3;
// Factorisations for the mpo and tensor_train banks: 6 = 2 * 3 * 1, 8 = 2 * 2 * 2.
const std::vector<int64_t> kModelFactors = {2, 3, 1}, kHiddenFactors = {2, 2, 2};

// A plan sending each of N tokens to k distinct random experts.
DispatchPlan random_plan(int64_t tokens, int64_t k, torch::Dtype dtype) {
  Routing routing;
  routing.expert_index = torch::rand({tokens, kExperts}).argsort(/*dim=*/int64_t{1}).narrow(1, 0, k).contiguous();
  routing.gate_weight = torch::softmax(torch::randn({tokens, k}, dtype), 1);
  return make_dispatch_plan(routing, kExperts, 0.0);
}

std::shared_ptr<ExpertBank> make_bank(const std::string& name, bool freeze_base = false) {
  return make_expert_bank(MoELayerOptions(kDim, kExperts, 2, kHidden)
                              .bank(name)
                              .rank(kRank)
                              .bond(kRank)
                              .model_factors(kModelFactors)
                              .hidden_factors(kHiddenFactors)
                              .freeze_base(freeze_base));
}

// Random values everywhere (LoRA's zero-initialised deltas would hide bugs in the delta path).
void randomise(ExpertBank& bank) {
  torch::NoGradGuard no_grad;
  for (auto& p : bank.parameters()) p.normal_(0, 0.5);
}

const std::vector<std::string> kBanks = {"ffn", "low_rank", "shared_projection", "lora", "mpo", "tensor_train"};

// The closed form of the README: a chain over modes m_1..m_n with bonds
// b_k = min(max_bond, m_1...m_k, m_{k+1}...m_n) holds sum_k b_{k-1} m_k b_k numbers (b_0 = b_n = 1).
int64_t chain_params(const std::vector<int64_t>& modes, int64_t max_bond) {
  int64_t total = 1, left = 1, params = 0, previous = 1;
  for (auto m : modes) total *= m;
  for (size_t k = 0; k < modes.size(); ++k) {
    left *= modes[k];
    const int64_t bond = k + 1 == modes.size() ? 1 : std::min({max_bond, left, total / left});
    params += previous * modes[k] * bond;
    previous = bond;
  }
  return params;
}

}  // namespace

TEST(ExpertBanks, OutputEqualsDenseReconstruction) {
  torch::manual_seed(50);
  for (const auto& name : kBanks) {
    SCOPED_TRACE(name);
    auto bank = make_bank(name);
    randomise(*bank);
    const auto x = torch::randn({9, kDim});
    const auto plan = random_plan(9, 2, torch::kFloat);
    const auto rows = bank->forward(x, plan);                // [M, D]
    const auto all = bank->all_experts_reference(x);         // [N, E, D]
    const auto expected = all.index({plan.token_index, plan.expert_of_row});  // [M, D]
    EXPECT_TRUE(torch::allclose(rows, expected, 1e-4, 1e-5));
  }
}

TEST(ExpertBanks, GradientsMatchFiniteDifferences) {
  for (const auto& name : kBanks) {
    SCOPED_TRACE(name);
    torch::manual_seed(51);
    auto bank = make_bank(name);
    bank->to(torch::kDouble);
    randomise(*bank);
    auto x = torch::randn({6, kDim}, torch::kDouble).requires_grad_(true);
    const auto plan = random_plan(6, 2, torch::kDouble);
    const auto probe = torch::randn({plan.token_index.size(0), kDim}, torch::kDouble);
    std::vector<std::pair<std::string, torch::Tensor>> inputs = {{"x", x}};
    for (const auto& item : bank->named_parameters()) inputs.push_back({item.key(), item.value()});
    moelab::testing::expect_gradients_match([&] { return (bank->forward(x, plan) * probe).sum(); }, inputs);
  }
}

TEST(ExpertBanks, ParameterCountsEqualTheReadmeFormulas) {
  const int64_t d = kDim, h = kHidden, e = kExperts, r = kRank;
  auto ffn = make_bank("ffn");
  EXPECT_EQ(ffn->params_total(), e * (2 * d * h + h + d));
  EXPECT_EQ(FfnExpertBank::params_for(FfnExpertBankOptions(d, h, e)), ffn->params_total());
  EXPECT_EQ(ffn->params_shared(), 0);
  EXPECT_EQ(ffn->params_per_expert_unique(), 2 * d * h + h + d);
  EXPECT_EQ(ffn->params_active_per_token(2.0), 2 * (2 * d * h + h + d));
  EXPECT_EQ(ffn->flops_per_token(2.0), 2 * 4 * d * h);

  auto low_rank = make_bank("low_rank");
  EXPECT_EQ(low_rank->params_total(), e * (2 * r * (d + h) + h + d));
  EXPECT_EQ(low_rank->params_per_expert_unique(), 2 * r * (d + h) + h + d);
  EXPECT_EQ(low_rank->flops_per_token(2.0), 2 * 4 * r * (d + h));

  auto shared = make_bank("shared_projection");
  EXPECT_EQ(shared->params_shared(), 2 * d * r + d);
  EXPECT_EQ(shared->params_total(), 2 * d * r + d + e * (2 * r * h + h));
  EXPECT_EQ(shared->params_per_expert_unique(), 2 * r * h + h);
  EXPECT_EQ(shared->flops_per_token(2.0), 2 * d * r + 2 * (4 * r * h + 2 * r * d));

  auto lora = make_bank("lora");
  EXPECT_EQ(lora->params_shared(), 2 * d * h + h + d);
  EXPECT_EQ(lora->params_total(), 2 * d * h + h + d + e * 2 * r * (d + h));
  EXPECT_EQ(lora->params_per_expert_unique(), 2 * r * (d + h));
  EXPECT_EQ(lora->params_active_per_token(2.0), 2 * d * h + h + d + 2 * 2 * r * (d + h));
  EXPECT_EQ(lora->flops_per_token(2.0), 2 * d * h + 2 * (2 * h * d + 4 * r * (d + h)));

  // mpo: core k of W_in couples model factor k with hidden factor k (mode m_k = i_k j_k); W_out the
  // reverse, which has the same modes. The central core (k = 1 of 3) is shared.
  auto mpo = make_bank("mpo");
  const std::vector<int64_t> modes = {2 * 2, 3 * 2, 1 * 2};
  EXPECT_EQ(chain_params(modes, r), 4 * 3 + 3 * 6 * 2 + 2 * 2);  // bonds 1, 3, 2, 1
  const int64_t central = 3 * 6 * 2;
  EXPECT_EQ(mpo->params_shared(), 2 * central);
  EXPECT_EQ(mpo->params_total(), 2 * central + e * (2 * (chain_params(modes, r) - central) + h + d));
  EXPECT_EQ(mpo->params_per_expert_unique(), 2 * (chain_params(modes, r) - central) + h + d);
  EXPECT_EQ(mpo->flops_per_token(2.0), 2 * 4 * d * h);

  // tensor_train: a shared base plus, per expert, a train over (model factors, hidden factors) for
  // W_in and over (hidden factors, model factors) for W_out.
  auto tt = make_bank("tensor_train");
  const int64_t tt_in = chain_params({2, 3, 1, 2, 2, 2}, r), tt_out = chain_params({2, 2, 2, 2, 3, 1}, r);
  EXPECT_EQ(tt_in, 4 + 18 + 9 + 18 + 12 + 4);
  EXPECT_EQ(tt_out, 4 + 12 + 18 + 18 + 9 + 1);
  EXPECT_EQ(tt->params_shared(), 2 * d * h + h + d);
  EXPECT_EQ(tt->params_total(), 2 * d * h + h + d + e * (tt_in + tt_out));
  EXPECT_EQ(tt->params_per_expert_unique(), tt_in + tt_out);
  EXPECT_EQ(tt->flops_per_token(2.0), 2 * d * h + 2 * (2 * h * d + 4 * r * (d + h)));
  EXPECT_EQ(std::dynamic_pointer_cast<TensorTrainExpertBank>(tt)->delta_rank(), r);
}

TEST(ExpertBanks, TensorTrainStartsAtTheBaseAndCanFreezeIt) {
  torch::manual_seed(54);
  auto bank = std::dynamic_pointer_cast<TensorTrainExpertBank>(make_bank("tensor_train", /*freeze_base=*/true));
  ASSERT_TRUE(bank);
  const auto x = torch::randn({5, kDim});
  const auto all = bank->all_experts_reference(x);
  for (int64_t e = 1; e < kExperts; ++e) EXPECT_TRUE(torch::allclose(all.select(1, e), all.select(1, 0)));
  const auto plan = random_plan(5, 2, torch::kFloat);
  bank->forward(x, plan).pow(2).sum().backward();
  EXPECT_FALSE(bank->w_in.grad().defined());
  ASSERT_TRUE(bank->delta_in.b_cores.back().grad().defined());
  EXPECT_GT(bank->delta_in.b_cores.back().grad().abs().sum().item<double>(), 0.0);
}

TEST(ExpertBanks, PerExpertParametersAreTheStackedOnes) {
  // What the factored optimiser updates lazily per expert: every parameter except the shared ones,
  // each with the expert axis first.
  for (const auto& name : kBanks) {
    SCOPED_TRACE(name);
    auto bank = make_bank(name);
    const auto stacked = bank->per_expert_parameters();
    EXPECT_EQ(stacked.size() + bank->shared_parameters().size(), bank->parameters().size());
    int64_t numel = 0;
    for (const auto& p : stacked) {
      EXPECT_EQ(p.size(0), kExperts);
      numel += p.numel();
    }
    EXPECT_EQ(numel, bank->params_total() - bank->params_shared());
  }
  auto mpo = std::dynamic_pointer_cast<MpoExpertBank>(make_bank("mpo"));
  const auto shared = mpo->shared_parameters();
  ASSERT_EQ(shared.size(), 2u);
  EXPECT_TRUE(shared[0].is_same(mpo->in.cores[mpo->central_index()]));
}

TEST(ExpertBanks, LoraStartsAtTheBaseAndCanFreezeIt) {
  torch::manual_seed(52);
  auto bank = std::dynamic_pointer_cast<LoraExpertBank>(make_bank("lora", /*freeze_base=*/true));
  const auto x = torch::randn({5, kDim});
  const auto all = bank->all_experts_reference(x);  // zero deltas: every expert equals the base
  for (int64_t e = 1; e < kExperts; ++e) EXPECT_TRUE(torch::allclose(all.select(1, e), all.select(1, 0)));
  const auto plan = random_plan(5, 2, torch::kFloat);
  bank->forward(x, plan).pow(2).sum().backward();
  EXPECT_FALSE(bank->w_in.grad().defined());
  EXPECT_FALSE(bank->w_out.grad().defined());
  ASSERT_TRUE(bank->lora_b_in.grad().defined());
  EXPECT_GT(bank->lora_b_in.grad().abs().sum().item<double>(), 0.0);
}

TEST(ExpertBanks, LayerAccountingReportsSharedUniqueAndCompression) {
  MoELayer lora(MoELayerOptions(kDim, kExperts, 2, kHidden).bank("lora").rank(kRank));
  const auto a = lora->accounting();
  EXPECT_EQ(a["params_shared"].get<int64_t>(), lora->experts->params_shared());
  EXPECT_EQ(a["params_per_expert_unique"].get<int64_t>(), 2 * kRank * (kDim + kHidden));
  const double ffn = kExperts * (2.0 * kDim * kHidden + kHidden + kDim);
  EXPECT_DOUBLE_EQ(a["compression_vs_ffn"].get<double>(), ffn / static_cast<double>(lora->experts->params_total()));
  MoELayer plain(MoELayerOptions(kDim, kExperts, 2, kHidden));
  EXPECT_DOUBLE_EQ(plain->accounting()["compression_vs_ffn"].get<double>(), 1.0);
}

TEST(ExpertBanks, SharedExpertsAddADenseFfnEveryTokenUses) {
  torch::manual_seed(53);
  MoELayer moe(MoELayerOptions(kDim, kExperts, 2, kHidden).shared_experts(2));
  ASSERT_TRUE(moe->shared);
  EXPECT_EQ(moe->shared->options.hidden_dim(), 2 * kHidden);
  moe->eval();
  const auto x = torch::randn({6, kDim});
  const auto with_shared = moe(x).output;
  auto routed_only = moe(x).output - moe->shared(x);
  MoELayer plain(MoELayerOptions(kDim, kExperts, 2, kHidden));
  {
    torch::NoGradGuard no_grad;
    for (const auto& item : plain->named_parameters()) item.value().copy_(moe->named_parameters()[item.key()]);
  }
  plain->eval();
  EXPECT_TRUE(torch::allclose(routed_only, plain(x).output, 1e-5, 1e-6));
  EXPECT_EQ(moe->params_active_per_token() - plain->params_active_per_token(), moe->shared->params_total());
  EXPECT_FALSE(torch::allclose(with_shared, plain(x).output));
}

TEST(ExpertBanks, RejectsBadRankAndUnknownName) {
  for (int64_t rank : {0, -1, 7}) {  // min(D = 6, H = 8) = 6
    EXPECT_THROW(make_expert_bank(MoELayerOptions(kDim, kExperts, 2, kHidden).bank("low_rank").rank(rank)), Error);
    EXPECT_THROW(make_expert_bank(MoELayerOptions(kDim, kExperts, 2, kHidden).bank("lora").rank(rank)), Error);
    EXPECT_THROW(make_expert_bank(MoELayerOptions(kDim, kExperts, 2, kHidden)
                                      .bank("tensor_train")
                                      .rank(rank)
                                      .model_factors(kModelFactors)
                                      .hidden_factors(kHiddenFactors)),
                 Error);
  }
  // tensor_train: factor lists of any length, but they must multiply to D and H.
  EXPECT_THROW(make_expert_bank(MoELayerOptions(kDim, kExperts, 2, kHidden)
                                    .bank("tensor_train")
                                    .model_factors({2, 2})
                                    .hidden_factors(kHiddenFactors)),
               Error);
  EXPECT_THROW(make_expert_bank(MoELayerOptions(kDim, kExperts, 2, kHidden).bank("mpo")), Error);  // no factors
  EXPECT_THROW(make_expert_bank(MoELayerOptions(kDim, kExperts, 2, kHidden).bank("mlp")), Error);
}

// Under expert parallelism a rank builds only its experts: two half banks (experts 0-1 and 2-3),
// built from the same generator state, hold exactly the whole bank's values, shared tensors
// included, and leave the default generator where the whole bank leaves it.
TEST(ExpertBanks, HalfBanksHoldTheWholeBanksValues) {
  for (const auto& name : kBanks) {
    SCOPED_TRACE(name);
    auto options = MoELayerOptions(kDim, kExperts, 2, kHidden)
                       .bank(name)
                       .rank(kRank)
                       .bond(kRank)
                       .model_factors(kModelFactors)
                       .hidden_factors(kHiddenFactors);
    torch::manual_seed(5);
    const auto whole = make_expert_bank(options);
    const auto after_whole = torch::rand({4});
    auto half_options = options;
    half_options.num_experts(kExperts / 2);
    std::vector<std::shared_ptr<ExpertBank>> halves;
    for (int64_t first : {0, 2}) {
      torch::manual_seed(5);
      halves.push_back(make_expert_bank(half_options, first));
      EXPECT_TRUE(torch::equal(torch::rand({4}), after_whole)) << "first expert " << first;
    }
    const auto parts0 = halves[0]->named_parameters(), parts1 = halves[1]->named_parameters();
    int64_t stacked = 0;
    for (const auto& item : whole->named_parameters()) {
      const auto& p0 = parts0[item.key()];
      const auto& p1 = parts1[item.key()];
      if (whole->is_per_expert(item.value())) {
        ++stacked;
        EXPECT_TRUE(torch::equal(torch::cat({p0, p1}, 0), item.value())) << item.key();
      } else {
        EXPECT_TRUE(torch::equal(p0, item.value())) << item.key();
        EXPECT_TRUE(torch::equal(p1, item.value())) << item.key();
      }
    }
    EXPECT_GT(stacked, 0);
    // Not all equal: every expert has its own values.
    const auto first = whole->per_expert_parameters().front();
    EXPECT_FALSE(torch::equal(first[0], first[1]));
  }
}
