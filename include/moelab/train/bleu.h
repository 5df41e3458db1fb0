// Corpus BLEU (Papineni et al. 2002) exactly as sacreBLEU 2.6.0 computes it with its defaults:
// one reference per hypothesis, mixed case, the mteval-v13a tokenisation ("13a"), n-grams up to
// order 4 and "exp" smoothing. Scores, printed lines and signatures are meant to equal sacreBLEU's
// character for character, so numbers from moelab can be quoted next to numbers from papers.
//
// Text is UTF-8. Where sacreBLEU (Python) treats a string as code points and "whitespace" as
// Python's str.split() set (which includes U+00A0, U+2000..U+200A, U+3000 and friends), these
// functions do the same on the UTF-8 bytes.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

// The version of sacreBLEU whose defaults and output format these functions reproduce; it is the
// last field of every signature.
inline constexpr const char* kSacrebleuVersion = "2.6.0";

// BLEU's highest n-gram order (sacreBLEU's MAX_NGRAM_ORDER).
inline constexpr int kBleuMaxOrder = 4;

// The mteval-v13a tokeniser as sacreBLEU applies it: drops "<skipped>", joins lines broken after a
// hyphen, unescapes &quot; &amp; &lt; &gt; (in that order, each once), puts spaces around most ASCII
// punctuation, splits '.' and ',' off unless they sit between digits, splits '-' off after a digit,
// and leaves single spaces between tokens. Apostrophes and word-internal hyphens stay.
std::string tokenize_13a(const std::string& line);

// Python's str.split() with no argument: the pieces between runs of (Unicode) whitespace.
std::vector<std::string> split_on_whitespace(const std::string& text);

// Python's str.rstrip() with no argument: text without its trailing (Unicode) whitespace.
std::string strip_trailing_whitespace(const std::string& text);

// How a corpus file's text is cut into segments. sacreBLEU opens files with newline="\n" (a '\r'
// stays in the line, and is later removed as trailing whitespace) but reads standard input in
// Python's universal-newline mode, where "\r\n", "\r" and "\n" all end a line.
enum class LineEndings { kNewlineOnly, kUniversal };

// One segment per line, empty lines kept; a final line without a line ending still counts, and a
// final line ending does not start an extra empty segment.
std::vector<std::string> split_segments(const std::string& text, LineEndings endings);

struct CorpusBleu {
  double score = 0;  // 0..100
  // Modified n-gram precision of order n + 1, in percent, after smoothing (what sacreBLEU prints).
  std::array<double, kBleuMaxOrder> precisions{};
  // Hypothesis n-grams of order n + 1 that a reference n-gram covers (clipped per segment), and all
  // hypothesis n-grams of that order.
  std::array<int64_t, kBleuMaxOrder> matched_ngrams{};
  std::array<int64_t, kBleuMaxOrder> total_ngrams{};
  double brevity_penalty = 1;  // sacreBLEU's "BP": 1 when the hypotheses are not shorter
  double ratio = 0;            // hyp_len / ref_len, 0 when ref_len is 0
  int64_t hyp_len = 0;         // 13a tokens in all hypotheses
  int64_t ref_len = 0;         // 13a tokens in all references
};

// BLEU of hypotheses[i] against references[i] over the whole corpus. Throws moelab::Error when the
// two lists differ in length. An empty corpus scores 0.
CorpusBleu corpus_bleu(const std::vector<std::string>& hypotheses, const std::vector<std::string>& references);

// sacreBLEU's score line, e.g.
// "BLEU = 35.12 66.1/41.5/28.0/19.6 (BP = 0.978 ratio = 0.978 hyp_len = 45 ref_len = 46)".
// width is the score's decimals: 2 as sacreBLEU's Python API prints, 1 as its command line does.
std::string format_bleu_line(const CorpusBleu& bleu, int width = 2);

// "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
std::string bleu_signature();

}  // namespace moelab
