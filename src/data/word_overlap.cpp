#include "moelab/data/word_overlap.h"

#include <unordered_set>

#include "moelab/data/task_vocabulary.h"

namespace moelab {

namespace {

// Marks each token of `side` whose word occurs in `other`, writing kWordOverlapFeatures per token.
std::vector<float> marks(const std::vector<std::string>& side, const std::vector<std::string>& other) {
  std::unordered_set<std::string> spelled, lowered;
  for (const auto& word : other) {
    spelled.insert(word);
    lowered.insert(lookup_form(word, true));
  }
  std::vector<float> out;
  out.reserve(side.size() * kWordOverlapFeatures);
  for (const auto& word : side) {
    out.push_back(spelled.count(word) ? 1.0F : 0.0F);
    out.push_back(lowered.count(lookup_form(word, true)) ? 1.0F : 0.0F);
  }
  return out;
}

}  // namespace

WordOverlap word_overlap(const std::vector<std::string>& question, const std::vector<std::string>& context) {
  return {marks(question, context), marks(context, question)};
}

}  // namespace moelab
