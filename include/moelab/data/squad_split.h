// SQuAD by article: the official SQuAD v1.1 training set cannot be obtained here, so models train
// and are scored on a split of the development set (48 articles). Whole articles go to one side,
// so no paragraph, and no question about it, is seen in training and scored in testing.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace moelab {

struct SquadSplit {
  nlohmann::json train, valid, test;  // SQuAD v1.1 documents; valid is empty with no valid articles
  int64_t articles[3] = {0, 0, 0};    // train, valid, test
  int64_t paragraphs[3] = {0, 0, 0};
  int64_t questions[3] = {0, 0, 0};
};

// Shuffles the articles with `seed` (a shuffle of our own, the same on every platform), gives the
// first train_articles to train, the next valid_articles to valid and the rest to test, each side
// in the file's order. Throws Error with one line for a document without articles or counts that
// leave the test side empty. `source` names the document in errors.
SquadSplit split_squad_by_article(const nlohmann::json& squad, int64_t train_articles, int64_t valid_articles,
                                  uint64_t seed, const std::string& source);

}  // namespace moelab
