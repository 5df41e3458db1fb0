// Character (byte) features of words: the same in any batch, case-sensitive, and padding-blind.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moelab/layers/char_word_encoder.h"
#include "moelab/util/error.h"

namespace moelab {
namespace {

torch::Tensor features_of(CharWordEncoder& encoder, const std::vector<std::string>& words) {
  std::vector<const std::string*> pointers;
  for (const auto& word : words) pointers.push_back(&word);
  return encoder(word_bytes(pointers));
}

TEST(CharFeatures, WordBytesArePaddedTruncatedAndRefuseEmptyWords) {
  const std::string a = "Ab", b = "c", long_word(40, 'x');
  const auto bytes = word_bytes({&a, &b});
  EXPECT_TRUE(torch::equal(bytes, torch::tensor({{'A' + 1, 'b' + 1}, {'c' + 1, 0}}, torch::kLong)));
  EXPECT_EQ(word_bytes({&long_word}).size(1), kMaxWordBytes);
  const std::string umlaut = "\xc3\xa4";  // one character, two bytes: both kept, never negative
  EXPECT_TRUE(torch::equal(word_bytes({&umlaut}), torch::tensor({{0xc3 + 1, 0xa4 + 1}}, torch::kLong)));
  const std::string empty;
  EXPECT_THROW(word_bytes({&empty}), Error);
}

TEST(CharFeatures, AWordHasTheSameFeaturesInAnyBatchAndCaseMatters) {
  for (const std::string kind : {"cnn", "bilstm"}) {
    torch::manual_seed(5);
    CharWordEncoder encoder(CharWordEncoderOptions(6, 5).kind(kind));
    encoder->eval();
    const auto alone = features_of(encoder, {"Paris"});
    ASSERT_EQ(alone.sizes(), torch::IntArrayRef({1, encoder->output_dim()}));
    // Among longer and shorter words, in another position: padding and neighbours must not matter.
    const auto among = features_of(encoder, {"a", "Washington", "Paris", "of"});
    EXPECT_TRUE(torch::allclose(among[2], alone[0], 1e-5, 1e-6)) << kind;
    EXPECT_TRUE(torch::allclose(features_of(encoder, {"of"})[0], among[3], 1e-5, 1e-6)) << kind;
    const auto lower = features_of(encoder, {"paris"});
    EXPECT_GT((lower[0] - alone[0]).abs().max().item<double>(), 1e-4) << kind << ": case must reach the features";
  }
  EXPECT_EQ(CharWordEncoder(CharWordEncoderOptions(4, 3)).ptr()->output_dim(), 3);
  EXPECT_EQ(CharWordEncoder(CharWordEncoderOptions(4, 3).kind("bilstm")).ptr()->output_dim(), 6);
  EXPECT_THROW(CharWordEncoder(CharWordEncoderOptions(4, 3).kind("gru")), Error);
}

TEST(CharFeatures, GradientsReachTheByteEmbeddingsButNotThePadding) {
  torch::manual_seed(6);
  CharWordEncoder encoder(CharWordEncoderOptions(4, 3));
  features_of(encoder, {"ab", "abcd"}).sum().backward();
  const auto grad = encoder->embedding->weight.grad();
  EXPECT_EQ(grad[0].abs().sum().item<double>(), 0.0);  // padding_idx
  EXPECT_GT(grad['a' + 1].abs().sum().item<double>(), 0.0);
  EXPECT_EQ(grad['z' + 1].abs().sum().item<double>(), 0.0);
}

}  // namespace
}  // namespace moelab
