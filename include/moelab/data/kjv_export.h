// The embedded default corpus: the King James Bible from Debian's bible-kjv package.
//
// `bible -f "Gen1:1-Rev22:21"` prints one verse per line as "Ge1:1 In the beginning ...". We drop the
// reference, split words from punctuation, and assign each verse to a split by a hash of its reference
// (FNV-1a 64-bit, mod 100: < 90 train, < 95 valid, else test). The split therefore does not depend on
// verse order or on any random state, and a verse never moves between splits.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

struct KjvVerse {
  std::string reference;  // "Ge1:1"
  std::string text;       // tokenised, single spaces: "In the beginning God created the heaven and the earth ."
};

enum class KjvSplit { kTrain, kValid, kTest };

// Parses `bible -f` output; lines without a reference are ignored. Throws Error when none parse.
std::vector<KjvVerse> parse_bible_output(const std::string& output);
// Separates punctuation ( , ; : . ? ! ( ) " ) from words; keeps case; apostrophes stay in their
// word (every one in the KJV is a possessive: "LORD's", "sons'"); hyphenated words stay whole.
std::string tokenize_verse(const std::string& text);
KjvSplit kjv_split_of(const std::string& reference);

struct KjvExportStats {
  int64_t verses[3] = {0, 0, 0};  // train, valid, test
  int64_t words[3] = {0, 0, 0};   // tokens excluding <eos>
};

// Runs `bible` (found on PATH; override the program with MOELAB_BIBLE), writes train/valid/test.txt
// into out_dir (created), each file written to a temp name and renamed. Throws Error with
// "install the Debian package bible-kjv" when the program is missing.
KjvExportStats export_kjv(const std::string& out_dir);

// Where data.corpus = "kjv" lives: $MOELAB_DATA_DIR/kjv, else $XDG_CACHE_HOME/moelab/kjv, else
// ~/.cache/moelab/kjv. Exports it first when the three files are not all there.
std::string ensure_kjv_corpus();

}  // namespace moelab
