// Soft MoE (Puigcerver et al. 2023) against a slow per-sequence reference, its gradients against
// finite differences, its refusals; DeepSeek-V3's sequence-wise balance loss by hand; and the
// sequence layouts the MoE layer is given.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "grad_check.h"
#include "moelab/balance/balance_losses.h"
#include "moelab/balance/sequence_balance_loss.h"
#include "moelab/config/config.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/layers/moe_on_tokens.h"
#include "moelab/models/model_from_config.h"
#include "moelab/util/error.h"

using namespace moelab;

namespace {

MoELayerOptions soft_options(int64_t d, int64_t experts, int64_t slots, int64_t hidden) {
  BalanceWeights none;
  return MoELayerOptions(d, experts, /*k=*/1, hidden).router(kSoftRouter).soft_slots(slots).balance(none);
}

// A Soft MoE layer in double precision, in evaluation mode, for exact comparisons.
MoELayer double_soft_layer(int64_t d, int64_t experts, int64_t slots, int64_t hidden) {
  MoELayer moe(soft_options(d, experts, slots, hidden));
  moe->to(torch::kDouble);
  moe->eval();
  return moe;
}

// Soft MoE written out for one sequence at a time, every step as the paper states it: x [n, D] the
// sequence's real tokens. Experts run through the bank's dense reference (every expert on every row).
torch::Tensor slow_soft_moe(MoELayerImpl& moe, const torch::Tensor& x) {
  const auto& soft = *moe.soft;
  const int64_t per_expert = soft.slots_per_expert();
  const auto x_unit = x / x.norm(2, 1, true).clamp_min(1e-12);
  const auto phi = soft.slot_embedding;
  const auto phi_unit = phi / phi.norm(2, 0, true).clamp_min(1e-12);
  const auto logits = soft.scale * x_unit.matmul(phi_unit);  // [n, S]
  const auto dispatch = logits.softmax(0);                    // over the sequence's tokens
  const auto combine = logits.softmax(1);                     // over the slots
  const auto slot_inputs = dispatch.t().matmul(x);            // [S, D]
  const auto every_expert = moe.experts->all_experts_reference(slot_inputs);  // [S, E, D]
  std::vector<torch::Tensor> slot_outputs;
  for (int64_t s = 0; s < soft.num_slots(); ++s) slot_outputs.push_back(every_expert[s][s / per_expert]);
  return combine.matmul(torch::stack(slot_outputs));  // [n, D]
}

}  // namespace

TEST(SoftMoE, EqualsASlowPerSequenceReferenceAndIgnoresPadding) {
  torch::manual_seed(3);
  const int64_t d = 6, t = 5, b = 3;
  auto moe = double_soft_layer(d, /*experts=*/3, /*slots=*/2, /*hidden=*/7);
  const auto x = torch::randn({t, b, d}, torch::kDouble);
  // Sequence lengths 5, 2 and 4: padding after each sequence's last token.
  const std::vector<int64_t> lengths = {5, 2, 4};
  auto padding = torch::zeros({t, b}, torch::kBool);
  for (int64_t j = 0; j < b; ++j) padding.narrow(0, lengths[j], t - lengths[j]).select(1, j).fill_(true);
  const auto out = moe_on_tokens(moe, x, {}, padding).output.view({t, b, d});
  for (int64_t j = 0; j < b; ++j) {
    const auto want = slow_soft_moe(*moe, x.select(1, j).narrow(0, 0, lengths[j]));
    EXPECT_TRUE(torch::allclose(out.select(1, j).narrow(0, 0, lengths[j]), want, 1e-10, 1e-12)) << "sequence " << j;
    EXPECT_EQ(out.select(1, j).narrow(0, lengths[j], t - lengths[j]).abs().sum().item<double>(), 0.0);
  }
  // What sits at a padded position changes nothing.
  auto noisy = x.clone();
  noisy.masked_fill_(padding.unsqueeze(2), 100.0);
  EXPECT_TRUE(torch::equal(moe_on_tokens(moe, noisy, {}, padding).output.view({t, b, d}), out));
  // Statistics: every expert takes p slots of each of the B sequences; nothing is dropped.
  const auto stats = moe_on_tokens(moe, x, {}, padding).stats;
  EXPECT_EQ(stats.num_tokens, 11);
  EXPECT_EQ(stats.num_assignments, 3 * 2 * b);
  EXPECT_EQ(stats.num_dropped, 0);
  EXPECT_NEAR(stats.importance.sum().item<double>(), 11.0, 1e-9);  // combine weights sum to 1 per token
}

TEST(SoftMoE, GradientsMatchFiniteDifferences) {
  torch::manual_seed(4);
  const int64_t d = 4, t = 3, b = 2;
  auto moe = double_soft_layer(d, /*experts=*/2, /*slots=*/2, /*hidden=*/3);
  auto padding = torch::zeros({t, b}, torch::kBool);
  padding[2][1] = true;
  auto x = torch::randn({t, b, d}, torch::kDouble).requires_grad_(true);
  const auto probe = torch::randn({t * b, d}, torch::kDouble);
  moelab::testing::expect_gradients_match([&] { return (moe_on_tokens(moe, x, {}, padding).output * probe).sum(); },
                                          {{"x", x},
                                           {"slot_embedding", moe->soft->slot_embedding},
                                           {"scale", moe->soft->scale}});
}

TEST(SoftMoE, IsRefusedWhereItCannotWork) {
  auto expect_error = [](const MoELayerOptions& options, const std::string& part) {
    try {
      MoELayer moe(options);
      ADD_FAILURE() << "no error; wanted one naming " << part;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_error(soft_options(4, 2, 1, 3).causal(true), "causal");
  expect_error(soft_options(4, 2, 1, 3).capacity_factor(1.0), "capacity_factor");
  expect_error(soft_options(4, 2, 1, 3).balance(BalanceWeights{0.1, 0.0, 0.0, 0.0}), "moe.balance");
  expect_error(soft_options(4, 2, 0, 3), "moe.soft_slots");
  expect_error(soft_options(4, 2, 1, 3).router_norm("rms"), "moe.router_norm");
  // Without sequences the layer cannot form slots.
  MoELayer moe(soft_options(4, 2, 1, 3));
  EXPECT_THROW(moe(torch::randn({5, 4})), Error);
  // The language models are causal even when window routing turns the layer's flag off.
  auto config = Config::defaults();
  for (const auto* o : {"moe.router=soft", "moe.balance.importance=0", "moe.balance.load=0",
                        "debug.window_routing_in_eval=true"})
    config.apply_override(o);
  EXPECT_THROW(make_language_model(config, 50), Error);
  config.apply_override("model.arch=transformer");
  EXPECT_THROW(make_language_model(config, 50), Error);
}

TEST(SequenceLayout, GridsPaddingAndPackedBatchesListTheirRows) {
  const auto grid = SequenceLayout::grid(3, 2);
  EXPECT_EQ(grid.rows(), 6);
  EXPECT_TRUE(torch::equal(grid.sequence_of_rows(torch::kCPU), torch::tensor({0, 1, 0, 1, 0, 1}, torch::kInt64)));
  auto padding = torch::zeros({3, 2}, torch::kBool);
  padding[2][0] = true;
  padding[1][1] = padding[2][1] = true;
  const auto padded = SequenceLayout::without_padding(padding);
  EXPECT_TRUE(torch::equal(padded.grid_position, torch::tensor({0, 1, 2}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(padded.sequence_of_rows(torch::kCPU), torch::tensor({0, 1, 0}, torch::kInt64)));
  // Packed: lengths 3, 1, 1 give batch sizes 3, 1, 1 (time-major rows, longest sequence first).
  const auto packed = SequenceLayout::packed(torch::tensor({3, 1, 1}, torch::kInt64));
  EXPECT_EQ(packed.batch, 3);
  EXPECT_TRUE(torch::equal(packed.grid_position, torch::tensor({0, 1, 2, 3, 6}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(packed.sequence_of_rows(torch::kCPU), torch::tensor({0, 1, 2, 0, 0}, torch::kInt64)));
}

TEST(SequenceBalanceLoss, IsTheSwitchLossOfEachSequenceAveraged) {
  // Two sequences of two tokens, E = 2, k = 1. Sequence 0 sends both tokens to expert 0 with
  // probabilities (0.8, 0.2) and (0.6, 0.4): f = (1, 0), P = (0.7, 0.3), loss 2 * 0.7 = 1.4.
  // Sequence 1 sends one token to each, probabilities (0.5, 0.5) and (0.1, 0.9): f = (0.5, 0.5),
  // P = (0.3, 0.7), loss 2 * (0.15 + 0.35) = 1.0. Mean 1.2.
  const auto probs = torch::tensor({0.8, 0.2, 0.6, 0.4, 0.5, 0.5, 0.1, 0.9}, torch::kDouble).view({4, 2});
  const auto chosen = torch::tensor({0, 0, 0, 1}, torch::kInt64).view({4, 1});
  const auto sequence = torch::tensor({0, 0, 1, 1}, torch::kInt64);
  EXPECT_NEAR(sequence_balance_loss(probs, chosen, sequence, 2).item<double>(), 1.2, 1e-12);
  // One sequence: the batch's Switch loss.
  EXPECT_NEAR(sequence_balance_loss(probs, chosen, torch::zeros({4}, torch::kInt64), 1).item<double>(),
              switch_loss(probs, slot_counts(chosen, 2)).item<double>(), 1e-12);
  // A sequence without tokens is left out of the mean; an empty slot counts for nobody.
  EXPECT_NEAR(sequence_balance_loss(probs, chosen, sequence * 2, 3).item<double>(), 1.2, 1e-12);
  const auto with_empty = torch::tensor({0, -1, -1, 0, 0, -1, -1, 1}, torch::kInt64).view({4, 2});
  EXPECT_NEAR(sequence_balance_loss(probs, with_empty, sequence, 2).item<double>(), 1.2, 1e-12);
  // Gradient through the probabilities (the counts carry none).
  torch::manual_seed(6);
  auto logits = torch::randn({7, 3}, torch::kDouble).requires_grad_(true);
  const auto index = torch::randint(0, 3, {7, 2}, torch::kInt64);
  const auto seq = torch::tensor({0, 1, 2, 0, 1, 2, 0}, torch::kInt64);
  moelab::testing::expect_gradients_match(
      [&] { return sequence_balance_loss(logits.softmax(1), index, seq, 3); }, {{"logits", logits}});
}

TEST(SequenceBalanceLoss, TheMoELayerAddsItOnlyWithSequences) {
  torch::manual_seed(7);
  BalanceWeights weights;
  weights.sequence = 0.5;
  MoELayer moe(MoELayerOptions(4, 4, 2, 3).router("topk_mask").balance(weights));
  const auto x = torch::randn({6, 4});
  const auto out = moe(x, torch::Tensor(), SequenceLayout::grid(3, 2));
  ASSERT_TRUE(out.loss_terms.count("sequence"));
  EXPECT_NEAR(out.aux_loss.item<double>(), 0.5 * out.loss_terms.at("sequence").item<double>(), 1e-6);
  EXPECT_THROW(moe(x), Error);  // the loss needs the sequences
}
