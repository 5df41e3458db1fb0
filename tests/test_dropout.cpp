// moelab::dropout: the hashed one-byte mask against its element-by-element twin, the statistics of
// the mask, the backward through the same mask, and the reproducibility the trainer relies on.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/device/dropout.h"
#include "moelab/util/error.h"


using moelab::dropout_mask;
using moelab::dropout_mask_reference;

TEST(Dropout, MaskEqualsItsElementByElementTwinWhateverTheThreads) {
  const int threads_before = at::get_num_threads();
  for (const int threads : {1, 2}) {
    at::set_num_threads(threads);
    for (const int64_t numel : {0, 1, 3, 4, 5, 4097, 20003})
      for (const double p : {0.0, 0.1, 0.5, 1.0}) {
        SCOPED_TRACE(testing::Message() << "threads " << threads << " numel " << numel << " p " << p);
        EXPECT_TRUE(torch::equal(dropout_mask(numel, p, 12345), dropout_mask_reference(numel, p, 12345)));
      }
  }
  at::set_num_threads(threads_before);
}

TEST(Dropout, DropsAboutPOfEveryLaneAndScalesTheRest) {
  const int64_t n = 1 << 20;
  const double p = 0.1;
  const auto mask = dropout_mask(n, p, 7).to(torch::kDouble);
  // Each of the four lanes a hash feeds, and the whole: binomial standard deviation ~6e-4 per lane.
  for (int64_t lane = 0; lane < 4; ++lane)
    EXPECT_NEAR(1.0 - mask.slice(0, lane, n, 4).mean().item<double>(), p, 0.004) << "lane " << lane;
  // Neighbouring elements are not correlated (a bad hash would repeat patterns).
  const auto a = mask.slice(0, 0, n - 1), b = mask.slice(0, 1, n);
  const double both_dropped = ((1 - a) * (1 - b)).mean().item<double>();
  EXPECT_NEAR(both_dropped, p * p, 0.002);

  torch::manual_seed(3);
  const auto x = torch::rand({256, 512}) + 0.5;  // no zeros: a zero output means dropped
  const auto y = moelab::dropout(x, p, /*training=*/true);
  const auto kept = y != 0;
  const double keep = (65536.0 - std::llround(p * 65536.0)) / 65536.0;
  EXPECT_TRUE(torch::allclose(y.masked_select(kept), x.masked_select(kept) / keep, 1e-6, 0));
  EXPECT_NEAR(1.0 - kept.to(torch::kDouble).mean().item<double>(), p, 0.01);
}

TEST(Dropout, BackwardGoesThroughTheSameMask) {
  torch::manual_seed(5);
  for (const auto dtype : {torch::kFloat, torch::kDouble, torch::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    auto x = (torch::rand({64, 33}) + 0.5).to(dtype).requires_grad_(true);
    const auto probe = torch::randn({64, 33}).to(dtype);
    const auto y = moelab::dropout(x, 0.3, /*training=*/true);
    EXPECT_EQ(y.scalar_type(), dtype);
    (y * probe).sum().backward();
    // d(y . probe)/dx = probe * (y / x): y / x is the mask times the scale.
    const auto expected = (probe.to(torch::kDouble) * (y.detach().to(torch::kDouble) / x.detach().to(torch::kDouble)));
    const double tolerance = dtype == torch::kBFloat16 ? 0.05 : 1e-6;
    EXPECT_TRUE(torch::allclose(x.grad().to(torch::kDouble), expected, tolerance, tolerance));
    EXPECT_GT((y == 0).sum().item<int64_t>(), 0);
  }
}

TEST(Dropout, RepeatsWithTheSeedAndIsTheIdentityOutsideTraining) {
  const auto x = torch::randn({1000});
  torch::manual_seed(11);
  const auto first = moelab::dropout(x, 0.2, true), second = moelab::dropout(x, 0.2, true);
  EXPECT_FALSE(torch::equal(first, second)) << "each call draws a new mask";
  torch::manual_seed(11);
  EXPECT_TRUE(torch::equal(moelab::dropout(x, 0.2, true), first));
  EXPECT_TRUE(moelab::dropout(x, 0.2, false).is_same(x));
  EXPECT_TRUE(moelab::dropout(x, 0.0, true).is_same(x));
  EXPECT_EQ(moelab::dropout(x, 1.0, true).abs().sum().item<double>(), 0.0);
  EXPECT_THROW(moelab::dropout(x, 1.5, true), moelab::Error);
  EXPECT_THROW(moelab::Dropout(-0.1), moelab::Error);
  moelab::Dropout module(0.5);
  module->eval();
  EXPECT_TRUE(module(x).is_same(x));
}
