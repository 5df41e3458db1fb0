// The linear-chain CRF against brute-force enumeration of every tag sequence of short sentences,
// finite differences, and the IOB2 constraints.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <limits>

#include "grad_check.h"
#include "moelab/data/packed_batches.h"
#include "moelab/layers/linear_chain_crf.h"
#include "moelab/util/error.h"

namespace moelab {
namespace {

const std::vector<std::string> kIob2Tags = {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"};

// Sentences of the given lengths (longest first) packed; emissions drawn per packed row.
struct MadeBatch {
  PackedBatch packed;
  torch::Tensor emissions;  // [N, C]
};

MadeBatch made_batch(const std::vector<int64_t>& lengths, int64_t num_tags, uint64_t seed,
                     torch::ScalarType dtype = torch::kFloat) {
  std::vector<std::vector<int64_t>> sentences;
  for (const auto length : lengths) sentences.emplace_back(static_cast<size_t>(length), 0);
  std::vector<const std::vector<int64_t>*> pointers;
  for (const auto& s : sentences) pointers.push_back(&s);
  MadeBatch batch;
  batch.packed = pack_sequences(pointers);
  torch::manual_seed(seed);
  batch.emissions = 2 * torch::randn({batch.packed.tokens(), num_tags}, dtype);
  return batch;
}

// Score of one sentence's tag sequence from the definition; -inf when a constraint forbids it.
double score_by_hand(const LinearChainCrfImpl& crf, const CrfConstraints& rules, const torch::Tensor& emissions,
                     const std::vector<int64_t>& rows, const std::vector<int64_t>& tags) {
  if (rules.allowed_start.defined() && !rules.allowed_start[tags[0]].item<bool>())
    return -std::numeric_limits<double>::infinity();
  double score = crf.start[tags[0]].item<double>() + crf.end[tags.back()].item<double>();
  for (size_t t = 0; t < tags.size(); ++t) {
    score += emissions[rows[t]][tags[t]].item<double>();
    if (t == 0) continue;
    if (rules.allowed.defined() && !rules.allowed[tags[t - 1]][tags[t]].item<bool>())
      return -std::numeric_limits<double>::infinity();
    score += crf.transitions[tags[t - 1]][tags[t]].item<double>();
  }
  return score;
}

// Calls visit(tags) for every one of C^length sequences.
void for_every_sequence(int64_t length, int64_t num_tags, const std::function<void(const std::vector<int64_t>&)>& visit) {
  std::vector<int64_t> tags(static_cast<size_t>(length), 0);
  while (true) {
    visit(tags);
    size_t i = 0;
    while (i < tags.size() && ++tags[i] == num_tags) tags[i++] = 0;
    if (i == tags.size()) return;
  }
}

std::vector<int64_t> sentence_tags(const torch::Tensor& packed_tags, const std::vector<int64_t>& rows) {
  std::vector<int64_t> tags;
  for (const auto row : rows) tags.push_back(packed_tags[row].item<int64_t>());
  return tags;
}

TEST(Crf, PartitionScoreAndViterbiEqualBruteForceOnShortSentences) {
  for (const bool constrained : {false, true}) {
    const auto rules = constrained ? iob2_constraints(kIob2Tags) : CrfConstraints{};
    LinearChainCrf crf(static_cast<int64_t>(kIob2Tags.size()), rules);
    const auto batch = made_batch({4, 3, 3, 1}, crf->num_tags, constrained ? 7 : 8);
    torch::NoGradGuard no_grad;
    const auto log_z = crf->log_partition(batch.emissions, batch.packed.batch_sizes);
    const auto decoded = crf->decode(batch.emissions, batch.packed.batch_sizes);
    ASSERT_EQ(log_z.size(0), 4);
    ASSERT_EQ(decoded.size(0), batch.packed.tokens());
    for (size_t b = 0; b < batch.packed.rows.size(); ++b) {
      const auto& rows = batch.packed.rows[b];
      double best_score = -std::numeric_limits<double>::infinity(), sum = 0;
      std::vector<int64_t> best_tags;
      for_every_sequence(static_cast<int64_t>(rows.size()), crf->num_tags, [&](const std::vector<int64_t>& tags) {
        const double score = score_by_hand(*crf, rules, batch.emissions, rows, tags);
        sum += std::exp(score);
        if (score > best_score) best_score = score, best_tags = tags;
      });
      EXPECT_NEAR(log_z[static_cast<int64_t>(b)].item<double>(), std::log(sum), 1e-4) << "sentence " << b;
      EXPECT_EQ(sentence_tags(decoded, rows), best_tags) << "sentence " << b << (constrained ? " (IOB2)" : "");
    }
    // The gold score of a valid sequence per sentence, against the definition.
    auto gold = torch::zeros({batch.packed.tokens()}, torch::kLong);
    for (const auto& rows : batch.packed.rows)
      for (size_t t = 0; t < rows.size(); ++t) gold[rows[t]] = t == 0 ? 1 : 2;  // B-PER I-PER I-PER ...
    const auto scores = crf->sequence_score(batch.emissions, batch.packed.batch_sizes, gold);
    for (size_t b = 0; b < batch.packed.rows.size(); ++b)
      EXPECT_NEAR(scores[static_cast<int64_t>(b)].item<double>(),
                  score_by_hand(*crf, rules, batch.emissions, batch.packed.rows[b],
                                sentence_tags(gold, batch.packed.rows[b])),
                  1e-4);
    // The loss is the summed negative log-likelihood per token.
    EXPECT_NEAR(crf->loss(batch.emissions, batch.packed.batch_sizes, gold).item<double>(),
                ((log_z - scores).sum() / batch.packed.tokens()).item<double>(), 1e-5);
  }
}

TEST(Crf, GradientsMatchFiniteDifferences) {
  LinearChainCrf crf(static_cast<int64_t>(kIob2Tags.size()), iob2_constraints(kIob2Tags));
  crf->to(torch::kDouble);
  auto batch = made_batch({5, 4, 2, 2, 1}, crf->num_tags, 3, torch::kDouble);
  auto emissions = batch.emissions.clone().requires_grad_(true);
  // A valid IOB2 tagging of the five sentences, packed time-major.
  const auto gold = torch::tensor({0, 0, 3, 1, 3, 1, 3, 4, 2, 2, 4, 0, 4, 3}, torch::kLong);
  ASSERT_EQ(gold.size(0), batch.packed.tokens());
  const auto batch_sizes = batch.packed.batch_sizes;
  testing::expect_gradients_match([&] { return crf->loss(emissions, batch_sizes, gold); },
                                  {{"emissions", emissions},
                                   {"transitions", crf->transitions},
                                   {"start", crf->start},
                                   {"end", crf->end}});
}

TEST(Crf, Iob2ConstraintsNeverDecodeAnInvalidSequence) {
  const std::vector<std::string> tags = {"B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"};
  const auto rules = iob2_constraints(tags);
  EXPECT_FALSE(rules.allowed_start[4].item<bool>());  // I-LOC cannot open a sentence
  EXPECT_TRUE(rules.allowed_start[0].item<bool>());
  EXPECT_TRUE(rules.allowed[0][4].item<bool>());   // B-LOC -> I-LOC
  EXPECT_TRUE(rules.allowed[4][4].item<bool>());   // I-LOC -> I-LOC
  EXPECT_FALSE(rules.allowed[3][4].item<bool>());  // B-PER -> I-LOC
  EXPECT_FALSE(rules.allowed[8][7].item<bool>());  // O -> I-PER
  LinearChainCrf crf(static_cast<int64_t>(tags.size()), rules);
  // Emissions that favour I- tags everywhere: without the constraints the best path is invalid.
  const std::vector<int64_t> lengths = {12, 9, 9, 5, 3, 1};
  auto batch = made_batch(lengths, crf->num_tags, 11);
  batch.emissions.slice(1, 4, 8).add_(3.0);
  int64_t invalid = 0;
  for (int trial = 0; trial < 20; ++trial) {
    torch::manual_seed(100 + trial);
    const auto emissions = batch.emissions + torch::randn_like(batch.emissions);
    const auto decoded = crf->decode(emissions, batch.packed.batch_sizes);
    for (const auto& rows : batch.packed.rows) EXPECT_TRUE(crf->allows(sentence_tags(decoded, rows)));
    LinearChainCrf free_crf(crf->num_tags);
    const auto unconstrained = free_crf->decode(emissions, batch.packed.batch_sizes);
    for (const auto& rows : batch.packed.rows) invalid += !crf->allows(sentence_tags(unconstrained, rows));
  }
  EXPECT_GT(invalid, 0) << "the emissions must tempt an unconstrained CRF into invalid sequences";
}

TEST(Crf, RefusesBatchesThatAreNotPacked) {
  LinearChainCrf crf(3);
  const auto emissions = torch::randn({5, 3});
  EXPECT_THROW(crf->log_partition(emissions, torch::tensor({2, 3}, torch::kLong)), Error);  // increasing
  EXPECT_THROW(crf->log_partition(emissions, torch::tensor({2, 2}, torch::kLong)), Error);  // 4 rows of 5
  EXPECT_THROW(crf->allows({0, 3}), Error);
  EXPECT_THROW(LinearChainCrf(3, iob2_constraints({"O", "B-X"})), Error);
}

}  // namespace
}  // namespace moelab
