// MPO decomposition and the mpo bank's own promises: exact at full bond, error predicted by the
// discarded singular values, one shared central core, and the gradient mask's update fraction.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "moelab/experts/mpo_decomposition.h"
#include "moelab/experts/mpo_expert_bank.h"
#include "moelab/experts/tensor_chain.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/util/error.h"

using namespace moelab;

namespace {

const std::vector<int64_t> kRows = {2, 3, 2}, kCols = {2, 2, 2};  // a 12 x 8 matrix

std::shared_ptr<MpoExpertBank> make_mpo(int64_t experts, int64_t bond, double central_update_p = 1.0) {
  return std::make_shared<MpoExpertBank>(
      MpoExpertBankOptions(12, 8, experts, kRows, kCols, bond).central_update_p(central_update_p));
}

}  // namespace

TEST(Mpo, BondSizesFollowTheProductsOnEitherSide) {
  EXPECT_EQ(chain_bond_sizes({4, 6, 4}, 100), (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(chain_bond_sizes({4, 6, 4}, 3), (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(chain_bond_sizes({2, 6, 8}, 4), (std::vector<int64_t>{2, 4}));
}

TEST(Mpo, FullBondReconstructsAnyMatrix) {
  torch::manual_seed(60);
  const auto w = torch::randn({12, 8}, torch::kDouble);
  for (int64_t centre : {0, 1, 2}) {
    const auto mpo = mpo_decompose(w, kRows, kCols, /*max_bond=*/100, centre);
    ASSERT_EQ(mpo.cores.size(), 3u);
    EXPECT_LT((mpo_to_matrix(mpo.cores, kRows, kCols) - w).abs().max().item<double>(), 1e-12);
    EXPECT_LT(mpo.discarded_squared, 1e-20);
  }
}

TEST(Mpo, TruncationErrorEqualsTheDiscardedSingularValues) {
  torch::manual_seed(61);
  const auto w = torch::randn({12, 8}, torch::kDouble);
  for (int64_t bond : {1, 2, 3}) {
    const auto mpo = mpo_decompose(w, kRows, kCols, bond, /*centre=*/1);
    const double error_squared = (mpo_to_matrix(mpo.cores, kRows, kCols) - w).pow(2).sum().item<double>();
    EXPECT_GT(mpo.discarded_squared, 0.0);
    EXPECT_NEAR(error_squared, mpo.discarded_squared, 1e-10 * mpo.norm_squared) << "bond " << bond;
    EXPECT_NEAR(mpo.relative_error(), std::sqrt(error_squared / w.pow(2).sum().item<double>()), 1e-10);
  }
}

TEST(Mpo, SingleTruncatedBondMatchesEckartYoung) {
  // Rows 1*3*4, columns 2*2*2: modes 2, 6, 8. Bond 1 can hold at most 2 (never truncated at 4);
  // bond 2 is cut from 8 to 4. The error is then the best rank-4 error of the unfolding that
  // splits modes (1, 2) from mode 3, computed here from its own SVD.
  torch::manual_seed(62);
  const std::vector<int64_t> rows = {1, 3, 4}, cols = {2, 2, 2};
  const auto w = torch::randn({12, 8}, torch::kDouble);
  const auto mpo = mpo_decompose(w, rows, cols, /*max_bond=*/4, /*centre=*/1);
  const auto unfolding = w.reshape({1, 3, 4, 2, 2, 2}).permute({0, 3, 1, 4, 2, 5}).reshape({12, 8});
  const auto s = std::get<1>(torch::linalg_svd(unfolding, false));
  const double tail = s.narrow(0, 4, 4).pow(2).sum().item<double>();
  const double error_squared = (mpo_to_matrix(mpo.cores, rows, cols) - w).pow(2).sum().item<double>();
  EXPECT_NEAR(error_squared, tail, 1e-10);
  EXPECT_NEAR(mpo.discarded_squared, tail, 1e-10);
}

TEST(Mpo, CentralCoreIsOneTensorSharedByAllExperts) {
  torch::manual_seed(63);
  auto bank = make_mpo(/*experts=*/4, /*bond=*/3);
  const int64_t c = bank->central_index();
  ASSERT_EQ(c, 1);
  for (const auto* matrix : {&bank->in, &bank->out}) {
    EXPECT_EQ(matrix->cores[c].dim(), 3);  // no expert axis
    for (int64_t k : {0, 2}) EXPECT_EQ(matrix->cores[k].size(0), 4);
  }
  // The registered parameter is the very tensor every expert's chain uses.
  EXPECT_TRUE(bank->named_parameters()["in_central"].is_same(bank->in.cores[c]));
  const auto before = bank->weight_in().detach().clone();
  {
    torch::NoGradGuard no_grad;
    bank->in.cores[c].add_(0.1);
  }
  const auto changed = (bank->weight_in().detach() - before).abs().sum({1, 2});
  for (int64_t e = 0; e < 4; ++e) EXPECT_GT(changed[e].item<double>(), 1e-6) << "expert " << e;
  // An auxiliary core belongs to one expert only.
  const auto after_central = bank->weight_in().detach().clone();
  {
    torch::NoGradGuard no_grad;
    bank->in.cores[0][2].add_(0.1);  // expert 2's first auxiliary core
  }
  const auto after_aux = bank->weight_in().detach();
  for (int64_t e = 0; e < 4; ++e)
    EXPECT_EQ(torch::equal(after_aux[e], after_central[e]), e != 2) << "expert " << e;
}

TEST(Mpo, GradientMaskUpdatesTheCentralCoreInAboutPOfTheSteps) {
  // 400 steps with p = 0.3: the count of steps that move the central cores is Binomial(400, 0.3),
  // mean 120, standard deviation 9.2; the test accepts 120 +- 4.5 sd. With SGD momentum and weight
  // decay a zeroed gradient would still move a tensor; the mask must stop it completely.
  const uint64_t seed = 7;
  for (double p : {0.3, 0.0}) {
    SCOPED_TRACE(p);
    torch::manual_seed(64);
    auto bank = make_mpo(3, 3, p);
    torch::optim::SGD sgd(bank->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9).weight_decay(1e-3));
    const int64_t c = bank->central_index();
    int64_t central_moves = 0, expected_moves = 0, aux_moves = 0;
    const int64_t steps = 400;
    for (int64_t step = 1; step <= steps; ++step) {
      const auto central_before = bank->in.cores[c].detach().clone();
      const auto out_central_before = bank->out.cores[c].detach().clone();
      const auto aux_before = bank->in.cores[0].detach().clone();
      const auto x = torch::randn({16, 12});
      Routing routing;
      routing.expert_index = torch::randint(0, 3, {16, 1}, torch::kInt64);
      routing.gate_weight = torch::ones({16, 1});
      const auto plan = make_dispatch_plan(routing, 3, 0.0);
      sgd.zero_grad();
      bank->forward(x, plan).pow(2).mean().backward();
      bank->mask_gradients(seed, step);
      sgd.step();
      const bool moved = !torch::equal(central_before, bank->in.cores[c].detach());
      EXPECT_EQ(moved, !torch::equal(out_central_before, bank->out.cores[c].detach()));  // both matrices together
      central_moves += moved;
      expected_moves += bank->central_updates_at(seed, step);
      aux_moves += !torch::equal(aux_before, bank->in.cores[0].detach());
    }
    EXPECT_EQ(central_moves, expected_moves);
    EXPECT_EQ(aux_moves, steps);
    if (p == 0.0) {
      EXPECT_EQ(central_moves, 0);
    } else {
      EXPECT_NEAR(static_cast<double>(central_moves), 120.0, 4.5 * std::sqrt(400 * 0.3 * 0.7));
    }
  }
}

TEST(Mpo, RejectsShapesItCannotBuild) {
  auto build = [](std::vector<int64_t> rows, std::vector<int64_t> cols, int64_t bond, double p = 1.0) {
    return std::make_shared<MpoExpertBank>(MpoExpertBankOptions(12, 8, 2, rows, cols, bond).central_update_p(p));
  };
  EXPECT_THROW(build({2, 3, 3}, {2, 2, 2}, 4), Error);  // 18 != 12
  EXPECT_THROW(build({2, 3, 2}, {2, 2, 3}, 4), Error);  // 12 != 8
  EXPECT_THROW(build({4, 3}, {2, 4}, 4), Error);        // even core count
  EXPECT_THROW(build({12}, {8}, 4), Error);             // a single core has no auxiliaries
  EXPECT_THROW(build({2, 3, 2}, {4, 2}, 4), Error);     // different counts
  EXPECT_THROW(build({2, 3, 2}, {2, 0, 2}, 4), Error);  // a zero factor
  EXPECT_THROW(build({}, {}, 4), Error);
  EXPECT_THROW(build({2, 3, 2}, {2, 2, 2}, 0), Error);  // bond 0
  EXPECT_THROW(build({2, 3, 2}, {2, 2, 2}, 4, 1.5), Error);
  try {
    build({2, 3, 3}, {2, 2, 2}, 4);
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("moe.model_factors"), std::string::npos) << error.what();
  }
  EXPECT_NO_THROW(build({2, 3, 2}, {2, 2, 2}, 1000));  // a large bond is clipped, not refused
}
