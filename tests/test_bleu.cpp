// BLEU and chrF against sacreBLEU 2.6.0 itself. The expected numbers, lines and tokenisations
// were produced by sacreBLEU (its Python API and command line), never by this code: the fixture
// pairs in tests/fixtures/bleu with expected.json (README.md there lists the commands), and the
// small corner cases and 13a tokenisations written out below. Tolerances are 1e-9 because the C++
// follows sacreBLEU's arithmetic operation by operation; a printed line must match character for
// character.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "moelab/train/bleu.h"
#include "moelab/train/chrf.h"
#include "moelab/util/error.h"
#include "test_util.h"

using moelab::testing::moelab_executable;
using moelab::testing::read_file;
using moelab::testing::run_moelab;
using moelab::testing::run_shell;
using moelab::testing::source_dir;
using moelab::testing::sq;
using moelab::testing::TempDir;
using moelab::testing::write_file;

namespace {

// Scores agree to rounding noise: both sides do the same double operations in the same order.
constexpr double kTolerance = 1e-9;

const std::string kFixtures = source_dir() + "/tests/fixtures/bleu";

nlohmann::json expected_json() { return nlohmann::json::parse(read_file(kFixtures + "/expected.json")); }

// A fixture file's segments, cut as sacreBLEU cuts a file.
std::vector<std::string> fixture_lines(const std::string& name) {
  return moelab::split_segments(read_file(kFixtures + "/" + name), moelab::LineEndings::kNewlineOnly);
}

TEST(Bleu, Tokenize13aMatchesSacrebleu) {
  // Right-hand sides: sacreBLEU 2.6.0's Tokenizer13a()(left-hand side) in Python, bytes as UTF-8.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"She said &quot;hi&quot; &amp; left.", "She said \" hi \" & left ."},
      // Each entity is unescaped once, &quot; before &amp;: "&amp;quot;" ends as "&quot;", "&amp;lt;" as "<".
      {"&amp;quot; &amp;lt;b&amp;gt; &lt;skipped&gt; &apos;x&apos; &#39;",
       "& quot ; < b > < skipped > & apos ; x & apos ; & # 39 ;"},
      // "<skipped>" is removed once, left to right, before entities are unescaped.
      {"a<skipped>b <skip<skipped>ped> <SKIPPED>", "ab < skipped > < SKIPPED >"},
      {"1,000.50 and 3.14, then x.y, end.", "1,000.50 and 3.14 , then x . y , end ."},
      {"pre-war 1990-2000 well-known -5 e-mail 12.5-3 3-4-5 a-b- -c",
       "pre-war 1990 - 2000 well-known -5 e-mail 12.5 - 3 3 - 4 - 5 a-b- -c"},
      {"don't (it's) \"quoted\" [x] {y} ~z^ a|b \\back `tick` _under_",
       "don't ( it's ) \" quoted \" [ x ] { y } ~ z ^ a | b \\ back ` tick ` _ under _"},
      {"@home #tag $5 %p +q =r ?s !t *u* /v/ :w; <x>",
       "@ home # tag $ 5 % p + q = r ? s ! t * u * / v / : w ; < x >"},
      {"line one-\nline two\nthree", "line oneline two three"},
      {"..., ,,. 1.. .1 ,2 a.,b 3.,4 Mr.Smith U.S.A.",
       ". . . , , , . 1 . . . 1 , 2 a . , b 3 . , 4 Mr . Smith U . S . A ."},
      // Non-ASCII letters stay attached; U+00A0, U+2003 and U+3000 are whitespace to Python.
      {"caf\xc3\xa9, na\xc3\xafve\xe2\x80\xa6 5 km\xc2\xb2 \xc2\xa0"
       "a\xc2\xa0"
       "b.\xe2\x80\x83"
       "c x\xe3\x80\x80y \xe2\x80\x9cq\xe2\x80\x9d",
       "caf\xc3\xa9 , na\xc3\xafve\xe2\x80\xa6 5 km\xc2\xb2 a b . c x y \xe2\x80\x9cq\xe2\x80\x9d"},
      {"  multiple   spaces\tand\ttabs  \r", "multiple spaces and tabs"},
      {"", ""},
      {"end with hyphen-", "end with hyphen-"},
  };
  for (const auto& [line, expected] : cases) EXPECT_EQ(moelab::tokenize_13a(line), expected) << "input: " << line;
}

TEST(Bleu, WhitespaceHelpersFollowPython) {
  const std::string nbsp = "\xc2\xa0", ideographic_space = "\xe3\x80\x80";
  EXPECT_EQ(moelab::split_on_whitespace(" a\tb" + nbsp + "c" + ideographic_space + "d\x1f" + "e \r\n"),
            (std::vector<std::string>{"a", "b", "c", "d", "e"}));
  EXPECT_EQ(moelab::strip_trailing_whitespace("x y " + nbsp + "\r"), "x y");
  EXPECT_EQ(moelab::strip_trailing_whitespace(" \t"), "");
  EXPECT_EQ(moelab::strip_trailing_whitespace("caf\xc3\xa9"), "caf\xc3\xa9");  // é is not U+00A0
}

TEST(Bleu, SplitSegmentsFollowsSacrebleuLineEndings) {
  using moelab::LineEndings;
  using moelab::split_segments;
  using Lines = std::vector<std::string>;
  EXPECT_EQ(split_segments("a\n\nb\n", LineEndings::kNewlineOnly), (Lines{"a", "", "b"}));
  EXPECT_EQ(split_segments("a\nb", LineEndings::kNewlineOnly), (Lines{"a", "b"}));
  EXPECT_EQ(split_segments("", LineEndings::kNewlineOnly), Lines{});
  EXPECT_EQ(split_segments("\n", LineEndings::kNewlineOnly), Lines{""});
  // Files: a '\r' stays in the line (the metrics strip it as trailing whitespace) ...
  EXPECT_EQ(split_segments("a\r\nb\rc\n", LineEndings::kNewlineOnly), (Lines{"a\r", "b\rc"}));
  // ... standard input: every "\r\n", "\r" and "\n" ends a line.
  EXPECT_EQ(split_segments("a\r\nb\rc\n\r\n", LineEndings::kUniversal), (Lines{"a", "b", "c", ""}));
}

TEST(Bleu, FixturesMatchSacrebleu) {
  const auto expected = expected_json();
  ASSERT_EQ(expected["sacrebleu_version"].get<std::string>(), moelab::kSacrebleuVersion);
  ASSERT_EQ(expected["pairs"].size(), 3u);
  for (const auto& [name, pair] : expected["pairs"].items()) {
    SCOPED_TRACE(name);
    const auto& want = pair["bleu"];
    const auto bleu = moelab::corpus_bleu(fixture_lines(pair["hypotheses"]), fixture_lines(pair["references"]));
    EXPECT_NEAR(bleu.score, want["score"].get<double>(), kTolerance);
    for (int n = 0; n < moelab::kBleuMaxOrder; ++n) {
      EXPECT_NEAR(bleu.precisions[n], want["precisions"][n].get<double>(), kTolerance) << "order " << n + 1;
      EXPECT_EQ(bleu.matched_ngrams[n], want["matched_ngrams"][n].get<int64_t>()) << "order " << n + 1;
      EXPECT_EQ(bleu.total_ngrams[n], want["total_ngrams"][n].get<int64_t>()) << "order " << n + 1;
    }
    EXPECT_NEAR(bleu.brevity_penalty, want["bp"].get<double>(), kTolerance);
    EXPECT_NEAR(bleu.ratio, want["ratio"].get<double>(), kTolerance);
    EXPECT_EQ(bleu.hyp_len, want["hyp_len"].get<int64_t>());
    EXPECT_EQ(bleu.ref_len, want["ref_len"].get<int64_t>());
    EXPECT_EQ(moelab::format_bleu_line(bleu), want["line"].get<std::string>());
    EXPECT_EQ(moelab::bleu_signature(), want["signature"].get<std::string>());
  }
}

TEST(Chrf, FixturesMatchSacrebleu) {
  const auto expected = expected_json();
  for (const auto& [name, pair] : expected["pairs"].items()) {
    SCOPED_TRACE(name);
    const auto& want = pair["chrf"];
    const auto chrf = moelab::corpus_chrf(fixture_lines(pair["hypotheses"]), fixture_lines(pair["references"]));
    EXPECT_NEAR(chrf.score, want["score"].get<double>(), kTolerance);
    EXPECT_EQ(moelab::format_chrf_line(chrf), want["line"].get<std::string>());
    EXPECT_EQ(moelab::chrf_signature(), want["signature"].get<std::string>());
  }
}

// Corner cases, each scored by sacreBLEU 2.6.0 as BLEU().corpus_score(hypotheses, [references]) and
// CHRF().corpus_score(hypotheses, [references]).
struct CornerCase {
  const char* name;
  std::vector<std::string> hypotheses, references;
  double bleu;
  std::array<int64_t, moelab::kBleuMaxOrder> matched, total;
  const char* bleu_line;
  double chrf;
};

TEST(Bleu, CornerCasesMatchSacrebleu) {
  const std::vector<CornerCase> cases = {
      // No hypothesis tokens: BP = 0 and all precisions 0.
      {"all_empty", {"", ""}, {"a b c", "d e"}, 0.0, {0, 0, 0, 0}, {0, 0, 0, 0},
       "BLEU = 0.00 0.0/0.0/0.0/0.0 (BP = 0.000 ratio = 0.000 hyp_len = 0 ref_len = 5)", 0.0},
      // No match of any order: 0 without smoothing.
      {"no_match", {"x y z w"}, {"a b c d"}, 0.0, {0, 0, 0, 0}, {4, 3, 2, 1},
       "BLEU = 0.00 0.0/0.0/0.0/0.0 (BP = 1.000 ratio = 1.000 hyp_len = 4 ref_len = 4)", 0.0},
      // No hypothesis 3-grams at all: those orders are not smoothed, and the score is 0.
      {"too_short_for_3grams", {"the cat", "sat"}, {"the cat sat", "sat down"}, 0.0, {3, 1, 0, 0}, {3, 1, 0, 0},
       "BLEU = 0.00 100.0/100.0/0.0/0.0 (BP = 0.513 ratio = 0.600 hyp_len = 3 ref_len = 5)", 41.91188166056943},
      // Two orders without a match: 100 / (2 * 5) then 100 / (4 * 4); 6.25 prints as "6.2".
      {"two_zero_orders", {"the cat ran off a mat today"}, {"the cat sat on the mat today"}, 18.575057999133602,
       {4, 2, 0, 0}, {7, 6, 5, 4}, "BLEU = 18.58 57.1/33.3/10.0/6.2 (BP = 1.000 ratio = 1.000 hyp_len = 7 ref_len = 7)",
       47.708412249588264},
      // A trailing '\r' and a trailing no-break space are stripped; "é" is one character for chrF.
      {"crlf_and_nbsp",
       {"Hello, world!\r", "caf\xc3\xa9 na\xc3\xafve\xc2\xa0"},
       {"Hello world!", "the caf\xc3\xa9 is na\xc3\xafve"},
       28.594155942838086, {5, 1, 0, 0}, {6, 4, 2, 1},
       "BLEU = 28.59 83.3/25.0/25.0/25.0 (BP = 0.846 ratio = 0.857 hyp_len = 6 ref_len = 7)", 48.30937716141577},
      // Clipping: seven "the" against a reference with two.
      {"repeated_clipping", {"the the the the the the the"}, {"the cat is on the mat"}, 7.809849842300637,
       {2, 0, 0, 0}, {7, 6, 5, 4}, "BLEU = 7.81 28.6/8.3/5.0/3.1 (BP = 1.000 ratio = 1.167 hyp_len = 7 ref_len = 6)",
       14.232426848159646},
      // chrF leaves out a segment's hypothesis n-grams where the reference is empty: 100 here.
      {"empty_reference", {"something here", "a b"}, {"", "a b"}, 0.0, {2, 1, 0, 0}, {4, 2, 0, 0},
       "BLEU = 0.00 50.0/50.0/0.0/0.0 (BP = 1.000 ratio = 2.000 hyp_len = 4 ref_len = 2)", 100.0},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const auto bleu = moelab::corpus_bleu(c.hypotheses, c.references);
    EXPECT_NEAR(bleu.score, c.bleu, kTolerance);
    EXPECT_EQ(bleu.matched_ngrams, c.matched);
    EXPECT_EQ(bleu.total_ngrams, c.total);
    EXPECT_EQ(moelab::format_bleu_line(bleu), c.bleu_line);
    EXPECT_NEAR(moelab::corpus_chrf(c.hypotheses, c.references).score, c.chrf, kTolerance);
  }
}

TEST(Bleu, WidthSetsTheScoreDecimalsOnly) {
  // sacreBLEU's command line (width 1) printed these for the "short" fixture pair.
  const auto hypotheses = fixture_lines("short.hyp"), references = fixture_lines("short.ref");
  EXPECT_EQ(moelab::format_bleu_line(moelab::corpus_bleu(hypotheses, references), 1),
            "BLEU = 9.1 89.5/43.8/15.4/5.0 (BP = 0.388 ratio = 0.514 hyp_len = 19 ref_len = 37)");
  EXPECT_EQ(moelab::format_chrf_line(moelab::corpus_chrf(hypotheses, references), 1), "chrF2 = 40.5");
}

TEST(Bleu, MismatchedLineCountsThrow) {
  const std::vector<std::string> two = {"a b", "c d"}, three = {"a b", "c d", "e f"};
  EXPECT_THROW(moelab::corpus_bleu(two, three), moelab::Error);
  EXPECT_THROW(moelab::corpus_bleu(three, two), moelab::Error);
  EXPECT_THROW(moelab::corpus_chrf(two, three), moelab::Error);
  EXPECT_EQ(moelab::corpus_bleu({}, {}).score, 0.0);
  EXPECT_EQ(moelab::corpus_chrf({}, {}).score, 0.0);
}

// ---- `moelab bleu` ----

std::string expected_command_output(const nlohmann::json& pair) {
  return pair["bleu"]["line"].get<std::string>() + "\n" + pair["chrf"]["line"].get<std::string>() + "\n" +
         "BLEU signature: " + pair["bleu"]["signature"].get<std::string>() + "\n" +
         "chrF2 signature: " + pair["chrf"]["signature"].get<std::string>() + "\n";
}

TEST(BleuCommand, PrintsSacrebleuLinesFromFilesAndStdin) {
  const auto expected = expected_json();
  for (const auto& [name, pair] : expected["pairs"].items()) {
    SCOPED_TRACE(name);
    const std::string ref = sq(kFixtures + "/" + pair["references"].get<std::string>());
    const std::string hyp = sq(kFixtures + "/" + pair["hypotheses"].get<std::string>());
    const auto from_file = run_moelab("bleu --ref " + ref + " --hyp " + hyp);
    EXPECT_EQ(from_file.exit_code, 0) << from_file.output;
    EXPECT_NE(from_file.output.find(expected_command_output(pair)), std::string::npos) << from_file.output;
    const auto from_stdin = run_shell(sq(moelab_executable()) + " bleu --ref " + ref + " < " + hyp);
    EXPECT_EQ(from_stdin.exit_code, 0) << from_stdin.output;
    EXPECT_NE(from_stdin.output.find(expected_command_output(pair)), std::string::npos) << from_stdin.output;
  }
}

TEST(BleuCommand, WindowsLineEndingsScoreTheSame) {
  const auto pair = expected_json()["pairs"]["ordinary"];
  TempDir dir;
  for (const char* name : {"ordinary.hyp", "ordinary.ref"}) {
    std::string crlf;
    for (const auto& line : fixture_lines(name)) crlf += line + "\r\n";
    write_file(dir.file(name), crlf);
  }
  const auto r = run_moelab("bleu --ref " + sq(dir.file("ordinary.ref")) + " --hyp " + sq(dir.file("ordinary.hyp")));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(expected_command_output(pair)), std::string::npos) << r.output;
}

TEST(BleuCommand, RefusesMismatchedOrUnreadableFiles) {
  TempDir dir;
  write_file(dir.file("five.hyp"), "a\nb\nc\nd\ne\n");
  const std::string ref = kFixtures + "/ordinary.ref";  // 6 lines
  const auto mismatch = run_moelab("bleu --ref " + sq(ref) + " --hyp " + sq(dir.file("five.hyp")));
  EXPECT_NE(mismatch.exit_code, 0) << mismatch.output;
  EXPECT_EQ(std::count(mismatch.output.begin(), mismatch.output.end(), '\n'), 1) << mismatch.output;
  for (const std::string& needle : {dir.file("five.hyp") + " has 5 lines", ref + " has 6"})
    EXPECT_NE(mismatch.output.find(needle), std::string::npos) << mismatch.output;

  const auto missing = run_moelab("bleu --ref " + sq(dir.file("missing.ref")) + " --hyp " + sq(dir.file("five.hyp")));
  EXPECT_NE(missing.exit_code, 0) << missing.output;
  EXPECT_EQ(std::count(missing.output.begin(), missing.output.end(), '\n'), 1) << missing.output;
  EXPECT_NE(missing.output.find(dir.file("missing.ref")), std::string::npos) << missing.output;
}

}  // namespace
