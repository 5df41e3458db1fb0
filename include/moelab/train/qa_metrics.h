// Extractive QA metrics with the official SQuAD v1.1 definitions: answers are normalised (lower
// case, ASCII punctuation removed, the articles a / an / the removed, whitespace collapsed); exact
// match and bag-of-tokens F1 take the best over the gold answers. Start / end accuracy compare the
// predicted token positions with the first gold answer's.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

std::string normalize_answer(const std::string& text);
double exact_match_score(const std::string& prediction, const std::string& gold);  // 0 or 1
double f1_score(const std::string& prediction, const std::string& gold);

class QaScorer {
 public:
  void add(const std::string& prediction, const std::vector<std::string>& golds, int64_t predicted_start,
           int64_t predicted_end, int64_t gold_start, int64_t gold_end);
  int64_t count() const { return count_; }
  double exact_match() const;  // percent
  double f1() const;           // percent
  double start_accuracy() const;  // percent
  double end_accuracy() const;    // percent

 private:
  int64_t count_ = 0, start_hits_ = 0, end_hits_ = 0;
  double exact_ = 0, f1_ = 0;
};

}  // namespace moelab
