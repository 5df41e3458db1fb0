#include "moelab/train/bleu.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string_view>
#include <unordered_map>

#include "moelab/util/error.h"

namespace moelab {

namespace {

// Byte length of the whitespace character that starts at text[i] (0 when none does), for Python's
// notion of whitespace: the ASCII controls \t..\r and \x1c..\x1f, space, and the Unicode spaces
// U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000. Lead bytes are
// never continuation bytes, so a byte-by-byte scan cannot start inside a multi-byte character.
size_t whitespace_length(const std::string& text, size_t i) {
  const auto byte = [&text](size_t k) { return k < text.size() ? static_cast<unsigned char>(text[k]) : 0u; };
  const unsigned b0 = byte(i), b1 = byte(i + 1), b2 = byte(i + 2);
  if ((b0 >= 0x09 && b0 <= 0x0d) || (b0 >= 0x1c && b0 <= 0x20)) return 1;
  if (b0 == 0xc2 && (b1 == 0x85 || b1 == 0xa0)) return 2;
  if (b0 == 0xe1 && b1 == 0x9a && b2 == 0x80) return 3;
  if (b0 == 0xe2 && b1 == 0x80 && ((b2 >= 0x80 && b2 <= 0x8a) || b2 == 0xa8 || b2 == 0xa9 || b2 == 0xaf)) return 3;
  if (b0 == 0xe2 && b1 == 0x81 && b2 == 0x9f) return 3;
  if (b0 == 0xe3 && b1 == 0x80 && b2 == 0x80) return 3;
  return 0;
}

// Python's str.replace: one left-to-right pass, so "&amp;quot;" becomes "&quot;" and stays so.
std::string replace_all(const std::string& text, const std::string& from, const std::string& to) {
  std::string out;
  size_t start = 0;
  for (size_t found; (found = text.find(from, start)) != std::string::npos; start = found + from.size())
    out.append(text, start, found - start).append(to);
  return out.append(text, start, std::string::npos);
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_period_or_comma(char c) { return c == '.' || c == ','; }

// The ASCII symbols 13a always separates: { | } ~ [ \ ] ^ _ ` space ! " # $ % & ( ) * + : ; < = > ? @
// and '/'. Left out on purpose: the apostrophe (don't), '-' (well-known), '.' and ',' (3.14, 1,000),
// which the later passes treat by context.
bool is_always_split_symbol(char c) {
  return (c >= '{' && c <= '~') || (c >= '[' && c <= '`') || (c >= ' ' && c <= '&') || (c >= '(' && c <= '+') ||
         (c >= ':' && c <= '@') || c == '/';
}

// The context passes below each scan left to right and, after a match, resume after both of its
// characters, as a regular-expression substitution does: in "a.." only the first '.' counts as
// "preceded by a non-digit". The bytes of a multi-byte UTF-8 character are all non-digits and never
// '.', ',' or '-', so scanning bytes gives what Python's scan over code points gives.

// "x." -> "x . ": a period or comma after a non-digit.
std::string split_period_comma_after_non_digit(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (i + 1 < text.size() && !is_digit(text[i]) && is_period_or_comma(text[i + 1])) {
      out += text[i];
      out += ' ';
      out += text[++i];
      out += ' ';
    } else {
      out += text[i];
    }
  }
  return out;
}

// ".x" -> " . x": a period or comma before a non-digit.
std::string split_period_comma_before_non_digit(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (i + 1 < text.size() && is_period_or_comma(text[i]) && !is_digit(text[i + 1])) {
      out += ' ';
      out += text[i];
      out += ' ';
      out += text[++i];
    } else {
      out += text[i];
    }
  }
  return out;
}

// "1990-2000" -> "1990 - 2000": a hyphen after a digit (a range, not a compound word).
std::string split_hyphen_after_digit(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (i + 1 < text.size() && is_digit(text[i]) && text[i + 1] == '-') {
      out += text[i];
      out += " - ";
      ++i;
    } else {
      out += text[i];
    }
  }
  return out;
}

// Counts of every n-gram of order 1..kBleuMaxOrder of one tokenised segment. A key views the
// segment itself (n tokens with their single separating spaces), so the segment must outlive the
// counts; keys of different orders differ in their number of spaces and so never collide.
struct SegmentNgrams {
  std::array<std::unordered_map<std::string_view, int64_t>, kBleuMaxOrder> counts;  // [order - 1]
  int64_t length = 0;                                                               // tokens
};

SegmentNgrams count_ngrams(const std::string& tokenized) {
  // tokenize_13a leaves exactly one ' ' between tokens and none at either end.
  std::vector<size_t> begins, ends;
  for (size_t i = 0; i < tokenized.size();) {
    const size_t end = std::min(tokenized.find(' ', i), tokenized.size());
    begins.push_back(i);
    ends.push_back(end);
    i = end + 1;
  }
  SegmentNgrams ngrams;
  ngrams.length = static_cast<int64_t>(begins.size());
  for (size_t order = 1; order <= kBleuMaxOrder; ++order)
    for (size_t first = 0; first + order <= begins.size(); ++first) {
      const size_t last = first + order - 1;
      ++ngrams.counts[order - 1][std::string_view(tokenized).substr(begins[first], ends[last] - begins[first])];
    }
  return ngrams;
}

// sacreBLEU floors log(0) at this value instead of -inf, so a zero precision makes the geometric
// mean exp(-2.5e9) = 0 without a floating-point exception.
constexpr double kLogOfZero = -9999999999.0;

double floored_log(double x) { return x == 0.0 ? kLogOfZero : std::log(x); }

// Precisions, brevity penalty and score from the corpus totals. The arithmetic follows sacreBLEU's
// order of operations so that the score agrees to the last bit, not merely to the printed digits.
void finish_bleu(CorpusBleu& bleu) {
  // Papineni et al. 2002, section 2.2.2: BP = exp(1 - r / c) when the candidate corpus (c tokens) is
  // shorter than the reference corpus (r tokens). No hypothesis tokens at all gets BP = 0.
  if (bleu.hyp_len < bleu.ref_len)
    bleu.brevity_penalty =
        bleu.hyp_len > 0 ? std::exp(1.0 - static_cast<double>(bleu.ref_len) / static_cast<double>(bleu.hyp_len)) : 0.0;
  bleu.ratio = bleu.ref_len > 0 ? static_cast<double>(bleu.hyp_len) / static_cast<double>(bleu.ref_len) : 0.0;

  // No matching n-gram of any order: score 0 and all precisions 0 (sacreBLEU skips smoothing here).
  if (std::all_of(bleu.matched_ngrams.begin(), bleu.matched_ngrams.end(), [](int64_t m) { return m == 0; })) return;

  // "exp" smoothing (Chen & Cherry 2014, method 3; the NIST mteval-v13a script): an order with no
  // match would make the geometric mean 0, so it gets the precision 1 / (2^k * total) instead, where
  // k counts the zero-match orders so far. Halving again at each further zero-match order makes
  // the stand-in shrink as the gaps pile up, so missing several orders costs more than missing one.
  double zero_match_divisor = 1.0;
  for (int n = 0; n < kBleuMaxOrder; ++n) {
    const auto total = static_cast<double>(bleu.total_ngrams[n]);
    if (bleu.total_ngrams[n] == 0) break;  // no hypothesis has n + 1 tokens: this and higher orders stay 0
    if (bleu.matched_ngrams[n] == 0) {
      zero_match_divisor *= 2.0;
      bleu.precisions[n] = 100.0 / (zero_match_divisor * total);
    } else {
      bleu.precisions[n] = 100.0 * static_cast<double>(bleu.matched_ngrams[n]) / total;
    }
  }

  // The geometric mean of the precisions with uniform weights 1/4 (Papineni et al., eq. 1).
  double log_sum = 0.0;
  for (const double precision : bleu.precisions) log_sum += floored_log(precision);
  bleu.score = bleu.brevity_penalty * std::exp(log_sum / kBleuMaxOrder);
}

}  // namespace

std::vector<std::string> split_on_whitespace(const std::string& text) {
  std::vector<std::string> pieces;
  std::string current;
  for (size_t i = 0; i < text.size();) {
    if (const size_t space = whitespace_length(text, i)) {
      if (!current.empty()) pieces.push_back(std::move(current));
      current.clear();
      i += space;
    } else {
      current += text[i++];
    }
  }
  if (!current.empty()) pieces.push_back(std::move(current));
  return pieces;
}

std::string strip_trailing_whitespace(const std::string& text) {
  size_t kept = 0;  // end of the last non-whitespace byte
  for (size_t i = 0; i < text.size();) {
    if (const size_t space = whitespace_length(text, i)) {
      i += space;
    } else {
      kept = ++i;
    }
  }
  return text.substr(0, kept);
}

std::string tokenize_13a(const std::string& line) {
  // mteval-v13a's language-independent part: segments come as one line each.
  std::string text = replace_all(line, "<skipped>", "");
  text = replace_all(text, "-\n", "");
  text = replace_all(text, "\n", " ");
  if (text.find('&') != std::string::npos) {
    text = replace_all(text, "&quot;", "\"");
    text = replace_all(text, "&amp;", "&");
    text = replace_all(text, "&lt;", "<");
    text = replace_all(text, "&gt;", ">");
  }

  // The padding spaces let a '.' or ',' at either end of the line see a non-digit neighbour.
  std::string spaced = " ";
  for (const char c : text) {
    if (is_always_split_symbol(c)) {
      spaced += ' ';
      spaced += c;
      spaced += ' ';
    } else {
      spaced += c;
    }
  }
  spaced += ' ';
  spaced = split_hyphen_after_digit(split_period_comma_before_non_digit(split_period_comma_after_non_digit(spaced)));

  std::string tokenized;
  for (const auto& token : split_on_whitespace(spaced)) {
    if (!tokenized.empty()) tokenized += ' ';
    tokenized += token;
  }
  return tokenized;
}

std::vector<std::string> split_segments(const std::string& text, LineEndings endings) {
  std::vector<std::string> segments;
  std::string current;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n' || (c == '\r' && endings == LineEndings::kUniversal)) {
      segments.push_back(std::move(current));
      current.clear();
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;  // "\r\n" is one line ending
    } else {
      current += c;
    }
  }
  if (!current.empty()) segments.push_back(std::move(current));
  return segments;
}

CorpusBleu corpus_bleu(const std::vector<std::string>& hypotheses, const std::vector<std::string>& references) {
  if (hypotheses.size() != references.size())
    fail("BLEU needs one reference per hypothesis: got {} hypotheses and {} references", hypotheses.size(),
         references.size());
  CorpusBleu bleu;
  for (size_t i = 0; i < hypotheses.size(); ++i) {
    // sacreBLEU strips trailing whitespace before tokenising, so a "\r" left by a Windows line ending
    // or a "-" before it changes nothing.
    const std::string hypothesis = tokenize_13a(strip_trailing_whitespace(hypotheses[i]));
    const std::string reference = tokenize_13a(strip_trailing_whitespace(references[i]));
    const SegmentNgrams hyp = count_ngrams(hypothesis);
    const SegmentNgrams ref = count_ngrams(reference);
    bleu.hyp_len += hyp.length;
    bleu.ref_len += ref.length;  // with one reference, the "closest reference length" is its own
    for (int n = 0; n < kBleuMaxOrder; ++n)
      for (const auto& [ngram, count] : hyp.counts[n]) {
        bleu.total_ngrams[n] += count;
        // Clipping (Papineni et al., section 2.1): a hypothesis n-gram counts at most as often as the
        // reference has it, so "the the the" earns no more than the reference's "the"s.
        if (const auto found = ref.counts[n].find(ngram); found != ref.counts[n].end())
          bleu.matched_ngrams[n] += std::min(count, found->second);
      }
  }
  finish_bleu(bleu);
  return bleu;
}

std::string format_bleu_line(const CorpusBleu& bleu, int width) {
  return fmt::format("BLEU = {:.{}f} {:.1f}/{:.1f}/{:.1f}/{:.1f} "
                     "(BP = {:.3f} ratio = {:.3f} hyp_len = {} ref_len = {})",
                     bleu.score, width, bleu.precisions[0], bleu.precisions[1], bleu.precisions[2], bleu.precisions[3],
                     bleu.brevity_penalty, bleu.ratio, bleu.hyp_len, bleu.ref_len);
}

std::string bleu_signature() {
  return fmt::format("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{}", kSacrebleuVersion);
}

}  // namespace moelab
