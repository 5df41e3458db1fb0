#include "moelab/train/qa_metrics.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <sstream>

namespace moelab {

namespace {

std::vector<std::string> words_of(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

double percent(double part, int64_t whole) { return whole > 0 ? 100.0 * part / static_cast<double>(whole) : 0.0; }

}  // namespace

std::string normalize_answer(const std::string& text) {
  std::string cleaned;
  cleaned.reserve(text.size());
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && std::ispunct(u)) continue;
    cleaned.push_back(u < 0x80 ? static_cast<char>(std::tolower(u)) : c);
  }
  std::string out;
  for (const auto& word : words_of(cleaned)) {
    if (word == "a" || word == "an" || word == "the") continue;
    if (!out.empty()) out.push_back(' ');
    out += word;
  }
  return out;
}

double exact_match_score(const std::string& prediction, const std::string& gold) {
  return normalize_answer(prediction) == normalize_answer(gold) ? 1.0 : 0.0;
}

double f1_score(const std::string& prediction, const std::string& gold) {
  const auto predicted = words_of(normalize_answer(prediction));
  const auto expected = words_of(normalize_answer(gold));
  std::map<std::string, int64_t> remaining;
  for (const auto& w : expected) ++remaining[w];
  int64_t common = 0;
  for (const auto& w : predicted)
    if (auto it = remaining.find(w); it != remaining.end() && it->second > 0) {
      --it->second;
      ++common;
    }
  if (common == 0) return 0.0;
  const double precision = static_cast<double>(common) / static_cast<double>(predicted.size());
  const double recall = static_cast<double>(common) / static_cast<double>(expected.size());
  return 2 * precision * recall / (precision + recall);
}

void QaScorer::add(const std::string& prediction, const std::vector<std::string>& golds, int64_t predicted_start,
                   int64_t predicted_end, int64_t gold_start, int64_t gold_end) {
  double best_exact = 0, best_f1 = 0;
  for (const auto& gold : golds) {
    best_exact = std::max(best_exact, exact_match_score(prediction, gold));
    best_f1 = std::max(best_f1, f1_score(prediction, gold));
  }
  exact_ += best_exact;
  f1_ += best_f1;
  start_hits_ += predicted_start == gold_start;
  end_hits_ += predicted_end == gold_end;
  ++count_;
}

double QaScorer::exact_match() const { return percent(exact_, count_); }
double QaScorer::f1() const { return percent(f1_, count_); }
double QaScorer::start_accuracy() const { return percent(static_cast<double>(start_hits_), count_); }
double QaScorer::end_accuracy() const { return percent(static_cast<double>(end_hits_), count_); }

}  // namespace moelab
