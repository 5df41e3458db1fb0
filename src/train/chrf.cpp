#include "moelab/train/chrf.h"

#include <fmt/format.h>

#include <algorithm>
#include <string_view>
#include <unordered_map>

#include "moelab/train/bleu.h"  // split_on_whitespace, kSacrebleuVersion
#include "moelab/util/error.h"

namespace moelab {

namespace {

using CharNgramCounts = std::unordered_map<std::string_view, int64_t>;

// Character n-grams of orders 1..kChrfCharOrder of text, counted; text has had its whitespace
// removed and must outlive the counts (the keys view it). Orders count code points, not bytes, so
// "é" is one character as in Python.
std::array<CharNgramCounts, kChrfCharOrder> count_char_ngrams(const std::string& text) {
  std::vector<size_t> starts;  // byte offset of each code point, then the end of the text
  for (size_t i = 0; i < text.size(); ++i)
    if ((static_cast<unsigned char>(text[i]) & 0xc0) != 0x80) starts.push_back(i);  // not a continuation byte
  starts.push_back(text.size());
  const size_t characters = starts.size() - 1;

  std::array<CharNgramCounts, kChrfCharOrder> counts;
  for (size_t order = 1; order <= kChrfCharOrder; ++order)
    for (size_t first = 0; first + order <= characters; ++first)
      ++counts[order - 1][std::string_view(text).substr(starts[first], starts[first + order] - starts[first])];
  return counts;
}

// The corpus score from the summed counts, in sacreBLEU's default "effective order" form (the "eff:yes"
// of its signature): precision and recall are averaged over the orders that both sides have at all,
// then combined into one F-beta. Averaging only those orders keeps a corpus of very short lines
// from being punished for 5- and 6-grams it cannot contain. The operations follow sacreBLEU's order
// so the result agrees to the last bit.
double chrf_score(const std::array<ChrfOrderCounts, kChrfCharOrder>& orders) {
  double precision_sum = 0.0, recall_sum = 0.0;
  int orders_present = 0;
  for (const auto& order : orders) {
    if (order.hypothesis == 0 || order.reference == 0) continue;
    precision_sum += static_cast<double>(order.matched) / static_cast<double>(order.hypothesis);
    recall_sum += static_cast<double>(order.matched) / static_cast<double>(order.reference);
    ++orders_present;
  }
  if (orders_present == 0) return 0.0;
  const double precision = precision_sum / orders_present;
  const double recall = recall_sum / orders_present;
  if (precision + recall == 0.0) return 0.0;
  // F-beta (Popović 2015, eq. 1): beta^2 = 4 makes recall count four times as much in the harmonic mean.
  constexpr double kBetaSquared = kChrfBeta * kChrfBeta;
  double f = (1 + kBetaSquared) * precision * recall;
  f /= kBetaSquared * precision + recall;
  return 100 * f;
}

}  // namespace

CorpusChrf corpus_chrf(const std::vector<std::string>& hypotheses, const std::vector<std::string>& references) {
  if (hypotheses.size() != references.size())
    fail("chrF needs one reference per hypothesis: got {} hypotheses and {} references", hypotheses.size(),
         references.size());
  CorpusChrf chrf;
  for (size_t i = 0; i < hypotheses.size(); ++i) {
    // chrF ignores word boundaries by default: n-grams run across the removed spaces.
    std::string hypothesis, reference;
    for (const auto& piece : split_on_whitespace(hypotheses[i])) hypothesis += piece;
    for (const auto& piece : split_on_whitespace(references[i])) reference += piece;
    const auto hyp = count_char_ngrams(hypothesis);
    const auto ref = count_char_ngrams(reference);
    for (int n = 0; n < kChrfCharOrder; ++n) {
      auto& totals = chrf.orders[n];
      int64_t hyp_count = 0;
      for (const auto& [ngram, count] : hyp[n]) {
        hyp_count += count;
        if (const auto found = ref[n].find(ngram); found != ref[n].end())
          totals.matched += std::min(count, found->second);
      }
      // sacreBLEU counts a segment's hypothesis n-grams only where its reference has n-grams of that
      // order: a hypothesis line against an empty or too short reference costs no precision there.
      if (!ref[n].empty()) totals.hypothesis += hyp_count;
      for (const auto& [ngram, count] : ref[n]) totals.reference += count;
    }
  }
  chrf.score = chrf_score(chrf.orders);
  return chrf;
}

std::string format_chrf_line(const CorpusChrf& chrf, int width) {
  return fmt::format("chrF{} = {:.{}f}", kChrfBeta, chrf.score, width);
}

std::string chrf_signature() {
  return fmt::format("nrefs:1|case:mixed|eff:yes|nc:{}|nw:0|space:no|version:{}", kChrfCharOrder, kSacrebleuVersion);
}

}  // namespace moelab
