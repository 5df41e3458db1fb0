// Corpus chrF (Popović 2015) exactly as sacreBLEU 2.6.0 computes it with its defaults: character
// n-grams of orders 1..6 over each line with all whitespace removed, no word n-grams (chrF, not
// chrF++), beta = 2 (recall weighs twice as much as precision), mixed case, one reference per
// hypothesis. Characters are Unicode code points of the UTF-8 text, as in Python.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

// chrF's highest character n-gram order (sacreBLEU's CHAR_ORDER) and its beta (BETA).
inline constexpr int kChrfCharOrder = 6;
inline constexpr int kChrfBeta = 2;

// Character n-gram counts of one order, summed over the corpus.
struct ChrfOrderCounts {
  int64_t hypothesis = 0;  // hypothesis n-grams (only of segments whose reference has n-grams of this order)
  int64_t reference = 0;   // reference n-grams
  int64_t matched = 0;     // hypothesis n-grams a reference n-gram covers, clipped per segment
};

struct CorpusChrf {
  double score = 0;                                  // 0..100
  std::array<ChrfOrderCounts, kChrfCharOrder> orders;  // [order - 1]
};

// chrF2 of hypotheses[i] against references[i] over the whole corpus. Throws moelab::Error when the
// two lists differ in length. An empty corpus scores 0.
CorpusChrf corpus_chrf(const std::vector<std::string>& hypotheses, const std::vector<std::string>& references);

// sacreBLEU's score line, "chrF2 = 57.12"; width is the score's decimals (2 in sacreBLEU's Python
// API, 1 on its command line).
std::string format_chrf_line(const CorpusChrf& chrf, int width = 2);

// "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0"
std::string chrf_signature();

}  // namespace moelab
