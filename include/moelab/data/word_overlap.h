// Word-overlap features between a question and its context: DrQA's "exact match" features
// (Chen et al. 2017). Per token, whether the same word occurs on the other side, once as spelled
// and once in lower case. With learned embeddings and a few thousand questions this is the signal a
// span extractor can use first: the rare words that tie a question to its answer's sentence are
// exactly the ones the vocabulary maps to <unk>, whose embeddings cannot tell them apart.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

// Features per token: [spelled the same, the same in lower case], 0 or 1 each.
constexpr int64_t kWordOverlapFeatures = 2;

struct WordOverlap {
  std::vector<float> question;  // [question tokens * kWordOverlapFeatures], row-major
  std::vector<float> context;   // [context tokens * kWordOverlapFeatures]
};

WordOverlap word_overlap(const std::vector<std::string>& question, const std::vector<std::string>& context);

}  // namespace moelab
