// Tests for src/data: vocabulary, word-level corpus loading, the KJV export, LM batching.
// Small made-up data only: no network, no ../shared/data, no real `bible` program.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "moelab/data/kjv_export.h"
#include "moelab/data/lm_batches.h"
#include "moelab/data/text_corpus.h"
#include "moelab/data/vocabulary.h"
#include "moelab/util/error.h"
#include "test_util.h"

using moelab::Error;
using moelab::testing::TempDir;
using moelab::testing::write_file;

namespace {

// Sets (or unsets, with nullopt) an environment variable for one scope, restoring it afterwards.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::optional<std::string>& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      setenv(name, value->c_str(), 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// Runs fn, expects a moelab::Error whose message contains every one of the substrings.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& substrings) {
  try {
    fn();
    ADD_FAILURE() << "expected moelab::Error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << "message is not one line: " << message;
    for (const auto& s : substrings) EXPECT_NE(message.find(s), std::string::npos) << "'" << s << "' not in: " << message;
  }
}

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  auto c = t.contiguous().to(torch::kInt64);
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

void write_executable(const std::string& path, const std::string& text) {
  write_file(path, text);
  ASSERT_EQ(chmod(path.c_str(), 0755), 0);
}

const char* kFakeBibleOutput =
    "Ge1:1 In the beginning God created the heaven and the earth.\n"
    "Ge1:2 And the earth was without form, and void; and darkness was upon the face of the deep.\n"
    "Ge1:3 And God said, Let there be light: and there was light.\n"
    "Ge1:25 And God made the beast of the earth after his kind.\n"
    "Ge2:12 And the gold of that land is good: there is bdellium and the onyx stone.\n"
    "Ps23:1 The LORD is my shepherd; I shall not want.\n";

// A shell script that prints the verses above, but only when called as `bible -f Gen1:1-Rev22:21`.
std::string fake_bible_script() {
  return std::string("#!/bin/sh\n") +
         "if [ \"$1\" != \"-f\" ] || [ \"$2\" != \"Gen1:1-Rev22:21\" ]; then echo \"bad args: $*\" >&2; exit 2; fi\n"
         "cat <<'EOF'\n" + kFakeBibleOutput + "EOF\n";
}

// --------------------------------------------------------------------------------------------
// Vocabulary

TEST(Vocabulary, OrdersByCountThenString) {
  std::unordered_map<std::string, int64_t> counts = {{"the", 10}, {"cat", 3}, {"bat", 3}, {"zebra", 5}, {"<eos>", 7}};
  const auto vocab = moelab::Vocabulary::build(counts, {});
  const std::vector<std::string> expected = {"the", "<eos>", "zebra", "bat", "cat", "<unk>"};
  EXPECT_EQ(vocab.tokens(), expected);
  EXPECT_EQ(vocab.size(), 6);
  EXPECT_EQ(vocab.id("the"), 0);
  EXPECT_EQ(vocab.eos_id(), 1);
  EXPECT_EQ(vocab.unk_id(), 5);
  EXPECT_EQ(vocab.token(3), "bat");
}

TEST(Vocabulary, AddsMissingSpecialsLast) {
  const auto vocab = moelab::Vocabulary::build({{"b", 1}, {"a", 1}}, {});
  const std::vector<std::string> expected = {"a", "b", "<eos>", "<unk>"};
  EXPECT_EQ(vocab.tokens(), expected);
  EXPECT_TRUE(vocab.contains("<eos>"));
  EXPECT_TRUE(vocab.contains("<unk>"));
}

TEST(Vocabulary, EmptyCountsStillHoldSpecials) {
  const auto vocab = moelab::Vocabulary::build({}, {});
  EXPECT_EQ(vocab.size(), 2);
  EXPECT_EQ(vocab.eos_id(), 0);
  EXPECT_EQ(vocab.unk_id(), 1);
}

TEST(Vocabulary, UnknownWordsMapToUnk) {
  const auto vocab = moelab::Vocabulary::build({{"a", 4}, {"<unk>", 9}}, {});
  EXPECT_EQ(vocab.unk_id(), 0);  // <unk> is the most frequent here
  EXPECT_EQ(vocab.id("never-seen"), vocab.unk_id());
  EXPECT_EQ(vocab.id("a"), 1);
  EXPECT_FALSE(vocab.contains("never-seen"));
}

TEST(Vocabulary, MinCountFiltersWordsButNeverSpecials) {
  moelab::VocabularyOptions options;
  options.min_count = 3;
  const auto vocab = moelab::Vocabulary::build({{"often", 5}, {"twice", 2}, {"thrice", 3}, {"<unk>", 1}}, options);
  const std::vector<std::string> expected = {"often", "thrice", "<unk>", "<eos>"};
  EXPECT_EQ(vocab.tokens(), expected);
  EXPECT_EQ(vocab.id("twice"), vocab.unk_id());
}

TEST(Vocabulary, MaxSizeTruncatesAndKeepsSpecials) {
  std::unordered_map<std::string, int64_t> counts = {{"a", 50}, {"b", 40}, {"c", 30}, {"d", 20}, {"<eos>", 35}};
  moelab::VocabularyOptions options;
  options.max_size = 4;
  const auto vocab = moelab::Vocabulary::build(counts, options);
  // Two word slots left after the specials; <eos> keeps its frequency position.
  const std::vector<std::string> expected = {"a", "b", "<eos>", "<unk>"};
  EXPECT_EQ(vocab.tokens(), expected);

  options.max_size = 2;
  const auto tiny = moelab::Vocabulary::build(counts, options);
  const std::vector<std::string> only_specials = {"<eos>", "<unk>"};
  EXPECT_EQ(tiny.tokens(), only_specials);

  options.max_size = 100;  // larger than needed: no truncation
  EXPECT_EQ(moelab::Vocabulary::build(counts, options).size(), 6);
}

TEST(Vocabulary, RejectsBadOptions) {
  moelab::VocabularyOptions options;
  options.max_size = 1;
  expect_error([&] { moelab::Vocabulary::build({{"a", 1}}, options); }, {"max_size"});
  options.max_size = -3;
  expect_error([&] { moelab::Vocabulary::build({{"a", 1}}, options); }, {"max_size", "-3"});
  options = {};
  options.min_count = -1;
  expect_error([&] { moelab::Vocabulary::build({{"a", 1}}, options); }, {"min_count"});
}

TEST(Vocabulary, TokenOutOfRangeThrows) {
  const auto vocab = moelab::Vocabulary::build({{"a", 1}}, {});
  expect_error([&] { vocab.token(3); }, {"3"});
  expect_error([&] { vocab.token(-1); }, {"-1"});
}

TEST(Vocabulary, TextRoundTrip) {
  const auto vocab = moelab::Vocabulary::build({{"x", 3}, {"y", 2}, {"don't", 2}, {"<unk>", 1}}, {});
  const std::string text = vocab.to_text();
  EXPECT_EQ(text, "x\ndon't\ny\n<unk>\n<eos>\n");
  const auto back = moelab::Vocabulary::from_text(text);
  EXPECT_EQ(back.tokens(), vocab.tokens());
  EXPECT_EQ(back.unk_id(), vocab.unk_id());
  EXPECT_EQ(back.eos_id(), vocab.eos_id());
  EXPECT_EQ(back.id("y"), vocab.id("y"));
  // No trailing newline and CRLF line ends are accepted too.
  EXPECT_EQ(moelab::Vocabulary::from_text("a\r\n<eos>\r\n<unk>").tokens(),
            (std::vector<std::string>{"a", "<eos>", "<unk>"}));
}

TEST(Vocabulary, FromTextRejectsBadInput) {
  expect_error([] { moelab::Vocabulary::from_text(""); }, {"empty"});
  expect_error([] { moelab::Vocabulary::from_text("a\nb\n<eos>\n"); }, {"<unk>"});
  expect_error([] { moelab::Vocabulary::from_text("a\n<unk>\n"); }, {"<eos>"});
  expect_error([] { moelab::Vocabulary::from_text("a\n<eos>\na\n<unk>\n"); }, {"'a'", "more than once"});
  expect_error([] { moelab::Vocabulary::from_text("a\n\n<eos>\n<unk>\n"); }, {"line 2", "empty"});
}

// --------------------------------------------------------------------------------------------
// Text corpus

TEST(TextCorpus, SplitWhitespace) {
  EXPECT_EQ(moelab::split_whitespace("  a\tbb  c \r"), (std::vector<std::string>{"a", "bb", "c"}));
  EXPECT_TRUE(moelab::split_whitespace(" \t ").empty());
  EXPECT_TRUE(moelab::split_whitespace("").empty());
}

TEST(TextCorpus, LoadsCountsAndEosForEveryLine) {
  TempDir dir;
  // 4 lines in train (one blank, one whitespace-only): 6 words + 4 <eos> = 10 tokens.
  write_file(dir.file("train.txt"), "the cat sat\n\n   \nthe dog the\n");
  // Last line without a newline still gets its <eos>: 3 words + 2 <eos>.
  write_file(dir.file("valid.txt"), "the bird\ncat");
  write_file(dir.file("test.txt"), "\n dog  \n");
  const auto corpus = moelab::load_text_corpus(dir.path(), {});
  const auto& v = corpus.vocabulary;
  // Counts: the 3, <eos> 4, cat/dog/sat 1; <unk> added with count 0.
  const std::vector<std::string> expected = {"<eos>", "the", "cat", "dog", "sat", "<unk>"};
  EXPECT_EQ(v.tokens(), expected);
  EXPECT_EQ(corpus.directory, dir.path());

  ASSERT_EQ(corpus.train.dim(), 1);
  EXPECT_EQ(corpus.train.scalar_type(), torch::kInt64);
  const int64_t eos = v.eos_id();
  EXPECT_EQ(to_vector(corpus.train),
            (std::vector<int64_t>{v.id("the"), v.id("cat"), v.id("sat"), eos, eos, eos, v.id("the"), v.id("dog"),
                                  v.id("the"), eos}));
  EXPECT_EQ(to_vector(corpus.valid), (std::vector<int64_t>{v.id("the"), v.unk_id(), eos, v.id("cat"), eos}));
  EXPECT_EQ(to_vector(corpus.test), (std::vector<int64_t>{eos, v.id("dog"), eos}));
}

TEST(TextCorpus, MinCountMapsRareTrainWordsToUnk) {
  TempDir dir;
  write_file(dir.file("train.txt"), "a a b\n");
  write_file(dir.file("valid.txt"), "a b\n");
  write_file(dir.file("test.txt"), "b\n");
  moelab::VocabularyOptions options;
  options.min_count = 2;
  const auto corpus = moelab::load_text_corpus(dir.path(), options);
  EXPECT_FALSE(corpus.vocabulary.contains("b"));
  const int64_t unk = corpus.vocabulary.unk_id();
  EXPECT_EQ(to_vector(corpus.train),
            (std::vector<int64_t>{corpus.vocabulary.id("a"), corpus.vocabulary.id("a"), unk, corpus.vocabulary.eos_id()}));
  EXPECT_EQ(to_vector(corpus.test), (std::vector<int64_t>{unk, corpus.vocabulary.eos_id()}));
}

TEST(TextCorpus, LoadSplitUsesGivenVocabulary) {
  TempDir dir;
  const auto vocab = moelab::Vocabulary::from_text("<eos>\nhello\n<unk>\n");
  write_file(dir.file("x.txt"), "hello world\nhello\n");
  EXPECT_EQ(to_vector(moelab::load_split(dir.file("x.txt"), vocab)), (std::vector<int64_t>{1, 2, 0, 1, 0}));
  expect_error([&] { moelab::load_split(dir.file("nope.txt"), vocab); }, {dir.file("nope.txt"), "missing"});
  write_file(dir.file("blank.txt"), "\n\n");
  expect_error([&] { moelab::load_split(dir.file("blank.txt"), vocab); }, {dir.file("blank.txt"), "empty"});
}

TEST(TextCorpus, MissingDirectory) {
  TempDir dir;
  const std::string missing = dir.file("no-such-corpus");
  expect_error([&] { moelab::load_text_corpus(missing, {}); }, {missing, "does not exist"});
  write_file(dir.file("plain"), "x\n");
  expect_error([&] { moelab::load_text_corpus(dir.file("plain"), {}); }, {dir.file("plain"), "not a directory"});
}

TEST(TextCorpus, MissingFile) {
  TempDir dir;
  write_file(dir.file("train.txt"), "a b\n");
  write_file(dir.file("test.txt"), "a\n");
  expect_error([&] { moelab::load_text_corpus(dir.path(), {}); }, {"corpus file", dir.file("valid.txt"), "missing"});
  write_file(dir.file("valid.txt"), "a\n");
  std::filesystem::remove(dir.file("train.txt"));
  expect_error([&] { moelab::load_text_corpus(dir.path(), {}); }, {dir.file("train.txt"), "missing"});
}

TEST(TextCorpus, EmptyFile) {
  TempDir dir;
  write_file(dir.file("train.txt"), "a b\n");
  write_file(dir.file("valid.txt"), "");
  write_file(dir.file("test.txt"), "a\n");
  expect_error([&] { moelab::load_text_corpus(dir.path(), {}); }, {"corpus file", dir.file("valid.txt"), "is empty"});
  write_file(dir.file("valid.txt"), "a\n");
  write_file(dir.file("train.txt"), " \n\n");  // blank lines only: no words
  expect_error([&] { moelab::load_text_corpus(dir.path(), {}); }, {dir.file("train.txt"), "is empty"});
}

TEST(TextCorpus, UnreadableFile) {
  TempDir dir;
  write_file(dir.file("train.txt"), "a b\n");
  write_file(dir.file("valid.txt"), "a\n");
  std::filesystem::create_directory(dir.file("test.txt"));  // a directory where a file should be
  expect_error([&] { moelab::load_text_corpus(dir.path(), {}); }, {dir.file("test.txt"), "not a regular file"});
}

// --------------------------------------------------------------------------------------------
// KJV export

TEST(Kjv, TokenizeVerse) {
  EXPECT_EQ(moelab::tokenize_verse("In the beginning God created the heaven and the earth."),
            "In the beginning God created the heaven and the earth .");
  EXPECT_EQ(moelab::tokenize_verse("And God said, Let there be light: and there was light."),
            "And God said , Let there be light : and there was light .");
  EXPECT_EQ(moelab::tokenize_verse("  the LORD's house;  the sons' wives (all of them)?!  "),
            "the LORD's house ; the sons' wives ( all of them ) ? !");
  EXPECT_EQ(moelab::tokenize_verse("Ben-hadad said \"Go\"..."), "Ben-hadad said \" Go \" . . .");
  EXPECT_EQ(moelab::tokenize_verse("a,b\tc"), "a , b c");
  EXPECT_EQ(moelab::tokenize_verse("   "), "");
}

TEST(Kjv, ParseBibleOutput) {
  const std::string output =
      "Ge1:1 In the beginning God created the heaven and the earth.\n"
      "this line has no reference\n"
      "\n"
      "1Chr1:1 Adam, Sheth, Enosh,\r\n"
      "Ge:x no digit in the reference\n"
      "Ge12 no colon in the reference\n"
      "Rev22:21 The grace of our Lord Jesus Christ be with you all. Amen.";
  const auto verses = moelab::parse_bible_output(output);
  ASSERT_EQ(verses.size(), 3u);
  EXPECT_EQ(verses[0].reference, "Ge1:1");
  EXPECT_EQ(verses[0].text, "In the beginning God created the heaven and the earth .");
  EXPECT_EQ(verses[1].reference, "1Chr1:1");
  EXPECT_EQ(verses[1].text, "Adam , Sheth , Enosh ,");
  EXPECT_EQ(verses[2].reference, "Rev22:21");
  EXPECT_EQ(verses[2].text, "The grace of our Lord Jesus Christ be with you all . Amen .");
}

TEST(Kjv, ParseBibleOutputWithoutVersesThrows) {
  expect_error([] { moelab::parse_bible_output(""); }, {"no verses"});
  expect_error([] { moelab::parse_bible_output("bible: cannot open data file\n"); }, {"no verses", "cannot open"});
}

TEST(Kjv, SplitIsFnv1aMod100) {
  // Buckets computed independently (Python FNV-1a 64): Ge1:1 -> 25, Ge1:2 -> 92, Ge1:25 -> 99.
  EXPECT_EQ(moelab::kjv_split_of("Ge1:1"), moelab::KjvSplit::kTrain);
  EXPECT_EQ(moelab::kjv_split_of("Ge1:2"), moelab::KjvSplit::kValid);
  EXPECT_EQ(moelab::kjv_split_of("Ge1:25"), moelab::KjvSplit::kTest);
  EXPECT_EQ(moelab::kjv_split_of("Ge2:12"), moelab::KjvSplit::kValid);  // 94
  EXPECT_EQ(moelab::kjv_split_of("Ge2:24"), moelab::KjvSplit::kTest);   // 99
  EXPECT_EQ(moelab::kjv_split_of("Rev22:21"), moelab::KjvSplit::kTrain);  // 5
}

TEST(Kjv, SplitIsDeterministicAndRoughly90To5To5) {
  int64_t counts[3] = {0, 0, 0};
  int64_t total = 0;
  for (int chapter = 1; chapter <= 100; ++chapter) {
    for (int verse = 1; verse <= 100; ++verse) {
      const std::string reference = "Bk" + std::to_string(chapter) + ":" + std::to_string(verse);
      const auto split = moelab::kjv_split_of(reference);
      EXPECT_EQ(split, moelab::kjv_split_of(reference));
      ++counts[static_cast<int>(split)];
      ++total;
    }
  }
  ASSERT_EQ(total, 10000);
  EXPECT_NEAR(counts[0], 9000, 250);
  EXPECT_NEAR(counts[1], 500, 150);
  EXPECT_NEAR(counts[2], 500, 150);
}

TEST(Kjv, ExportWithFakeBible) {
  TempDir dir;
  write_executable(dir.file("fake-bible"), fake_bible_script());
  ScopedEnv bible("MOELAB_BIBLE", dir.file("fake-bible"));
  const std::string out = dir.file("out/kjv");  // parents are created
  const auto stats = moelab::export_kjv(out);

  // Ge1:1, Ge1:3 (bucket 3), Ps23:1 (34) -> train; Ge1:2, Ge2:12 -> valid; Ge1:25 -> test.
  EXPECT_EQ(stats.verses[0], 3);
  EXPECT_EQ(stats.verses[1], 2);
  EXPECT_EQ(stats.verses[2], 1);
  const std::string train = moelab::testing::read_file(out + "/train.txt");
  EXPECT_EQ(train,
            "In the beginning God created the heaven and the earth .\n"
            "And God said , Let there be light : and there was light .\n"
            "The LORD is my shepherd ; I shall not want .\n");
  EXPECT_EQ(stats.words[0], 11 + 14 + 11);
  EXPECT_EQ(moelab::testing::read_file(out + "/test.txt"),
            "And God made the beast of the earth after his kind .\n");
  EXPECT_EQ(stats.words[2], 12);
  EXPECT_EQ(stats.words[1], 20 + 17);
  // No temp files are left behind.
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(out)) {
    EXPECT_EQ(entry.path().extension(), ".txt") << entry.path();
    ++files;
  }
  EXPECT_EQ(files, 3);

  // The exported directory loads as a corpus.
  const auto corpus = moelab::load_text_corpus(out, {});
  EXPECT_EQ(corpus.train.numel(), 36 + 3);
  EXPECT_EQ(corpus.test.numel(), 12 + 1);
}

TEST(Kjv, MissingProgramNamesThePackage) {
  TempDir dir;
  {
    ScopedEnv bible("MOELAB_BIBLE", dir.file("no-such-bible"));
    expect_error([&] { moelab::export_kjv(dir.file("out")); }, {"bible-kjv", "MOELAB_BIBLE"});
  }
  {
    ScopedEnv bible("MOELAB_BIBLE", std::nullopt);
    ScopedEnv path("PATH", dir.path());  // an empty directory: no `bible` on PATH
    expect_error([&] { moelab::export_kjv(dir.file("out")); },
                 {"`bible` program was not found", "install the Debian package bible-kjv"});
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("out")));
}

TEST(Kjv, FindsProgramOnPath) {
  TempDir dir;
  std::filesystem::create_directory(dir.file("bin"));
  write_executable(dir.file("bin/bible"), fake_bible_script());
  ScopedEnv bible("MOELAB_BIBLE", std::nullopt);
  ScopedEnv path("PATH", "/nonexistent-dir:" + dir.file("bin") + ":/bin:/usr/bin");
  const auto stats = moelab::export_kjv(dir.file("out"));
  EXPECT_EQ(stats.verses[0] + stats.verses[1] + stats.verses[2], 6);
}

TEST(Kjv, FailingProgramThrows) {
  TempDir dir;
  write_executable(dir.file("broken"), "#!/bin/sh\necho 'Ge1:1 half a verse.'\necho 'data file is corrupt' >&2\nexit 3\n");
  ScopedEnv bible("MOELAB_BIBLE", dir.file("broken"));
  expect_error([&] { moelab::export_kjv(dir.file("out")); }, {"exit status 3"});
  EXPECT_FALSE(std::filesystem::exists(dir.file("out/train.txt")));
}

TEST(Kjv, ProgramWithoutVersesThrows) {
  TempDir dir;
  write_executable(dir.file("chatty"), "#!/bin/sh\necho 'no verses here'\n");
  ScopedEnv bible("MOELAB_BIBLE", dir.file("chatty"));
  expect_error([&] { moelab::export_kjv(dir.file("out")); }, {"no verses"});
}

TEST(Kjv, EnsureCorpusExportsOnceIntoDataDir) {
  TempDir dir;
  write_executable(dir.file("fake-bible"), fake_bible_script());
  ScopedEnv data("MOELAB_DATA_DIR", dir.file("data"));
  {
    ScopedEnv bible("MOELAB_BIBLE", dir.file("fake-bible"));
    EXPECT_EQ(moelab::ensure_kjv_corpus(), dir.file("data") + "/kjv");
  }
  for (const char* name : {"train.txt", "valid.txt", "test.txt"}) {
    EXPECT_TRUE(std::filesystem::is_regular_file(dir.file("data") + "/kjv/" + name)) << name;
  }
  // With the files present nothing is run: a missing program does not matter.
  ScopedEnv bible("MOELAB_BIBLE", dir.file("gone"));
  EXPECT_EQ(moelab::ensure_kjv_corpus(), dir.file("data") + "/kjv");
  // A missing split triggers a new export (which now fails for want of the program).
  std::filesystem::remove(dir.file("data") + "/kjv/valid.txt");
  expect_error([] { moelab::ensure_kjv_corpus(); }, {"bible-kjv"});
}

TEST(Kjv, EnsureCorpusFallsBackToXdgCache) {
  TempDir dir;
  write_executable(dir.file("fake-bible"), fake_bible_script());
  ScopedEnv data("MOELAB_DATA_DIR", std::nullopt);
  ScopedEnv xdg("XDG_CACHE_HOME", dir.file("cache"));
  ScopedEnv bible("MOELAB_BIBLE", dir.file("fake-bible"));
  EXPECT_EQ(moelab::ensure_kjv_corpus(), dir.file("cache") + "/moelab/kjv");
  EXPECT_TRUE(std::filesystem::is_regular_file(dir.file("cache") + "/moelab/kjv/train.txt"));
  ScopedEnv no_xdg("XDG_CACHE_HOME", std::nullopt);
  ScopedEnv home("HOME", dir.file("home"));
  EXPECT_EQ(moelab::ensure_kjv_corpus(), dir.file("home") + "/.cache/moelab/kjv");
  EXPECT_TRUE(std::filesystem::is_regular_file(dir.file("home") + "/.cache/moelab/kjv/test.txt"));
}

// --------------------------------------------------------------------------------------------
// LM batches

TEST(LmBatches, ShapesAndColumns) {
  const auto stream = torch::arange(23, torch::kInt64);  // 23 tokens, 4 columns -> L = 5, 3 dropped
  moelab::LmBatches batches(stream, 4, 2);
  EXPECT_EQ(batches.num_columns(), 4);
  EXPECT_EQ(batches.tokens_per_column(), 5);
  EXPECT_EQ(batches.num_windows(), 2);  // ceil((5 - 1) / 2)
  const auto w0 = batches.window(0);
  EXPECT_EQ(w0.input.sizes(), (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(w0.input.scalar_type(), torch::kInt64);
  // Column b holds the contiguous tokens [b*5, b*5+5).
  EXPECT_EQ(to_vector(w0.input), (std::vector<int64_t>{0, 5, 10, 15, 1, 6, 11, 16}));
  EXPECT_EQ(to_vector(w0.target), (std::vector<int64_t>{1, 6, 11, 16, 2, 7, 12, 17}));
}

TEST(LmBatches, TokensThroughCountsEveryWindowsTargetsAcrossEpochs) {
  // The count a resumed run's curves continue from: the sum of the windows' target sizes, the short
  // last window of each epoch included, checked against walking the windows.
  const auto stream = torch::arange(1000, 1030, torch::kInt64);  // L = 10: windows of 4, 4, 1 rows
  moelab::LmBatches batches(stream, 3, 4);
  int64_t walked = 0;
  for (int64_t step = 1; step <= 10; ++step) {
    walked += batches.window((step - 1) % batches.num_windows()).target.numel();
    EXPECT_EQ(batches.tokens_through(step), walked) << step;
  }
  EXPECT_EQ(batches.tokens_through(0), 0);
}

TEST(LmBatches, TargetsAreInputsShiftedByOneAndLastWindowIsShorter) {
  const auto stream = torch::arange(1000, 1030, torch::kInt64);  // 30 tokens, 3 columns -> L = 10
  moelab::LmBatches batches(stream, 3, 4);
  ASSERT_EQ(batches.num_windows(), 3);  // ceil(9 / 4): steps 4, 4, 1
  std::vector<int64_t> lengths;
  int64_t steps = 0;
  for (int64_t i = 0; i < batches.num_windows(); ++i) {
    const auto w = batches.window(i);
    ASSERT_EQ(w.input.sizes(), w.target.sizes());
    ASSERT_EQ(w.input.size(1), 3);
    lengths.push_back(w.input.size(0));
    // Within a column consecutive stream tokens differ by one.
    EXPECT_TRUE(torch::equal(w.target, w.input + 1));
    EXPECT_EQ(w.input[0][0].item<int64_t>(), 1000 + steps);
    steps += w.input.size(0);
  }
  EXPECT_EQ(lengths, (std::vector<int64_t>{4, 4, 1}));
  EXPECT_EQ(steps, 9);  // every token but the last of a column is an input once
  EXPECT_EQ(batches.window(2).target[0][2].item<int64_t>(), 1029);
}

TEST(LmBatches, ExactMultipleOfBptt) {
  moelab::LmBatches batches(torch::arange(10, torch::kInt64), 2, 2);  // L = 5 -> 4 steps -> 2 windows
  EXPECT_EQ(batches.num_windows(), 2);
  EXPECT_EQ(batches.window(1).input.size(0), 2);
  moelab::LmBatches minimal(torch::arange(6, torch::kInt64), 3, 35);  // L = 2: one window of one step
  EXPECT_EQ(minimal.num_windows(), 1);
  EXPECT_EQ(to_vector(minimal.window(0).input), (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(to_vector(minimal.window(0).target), (std::vector<int64_t>{1, 3, 5}));
}

TEST(LmBatches, Errors) {
  const auto stream = torch::arange(20, torch::kInt64);
  expect_error([&] { moelab::LmBatches(stream, 0, 5); }, {"batch", "0"});
  expect_error([&] { moelab::LmBatches(stream, -2, 5); }, {"batch", "-2"});
  expect_error([&] { moelab::LmBatches(stream, 2, 0); }, {"bptt", "0"});
  expect_error([&] { moelab::LmBatches(stream, 2, -1); }, {"bptt", "-1"});
  expect_error([&] { moelab::LmBatches(stream, 11, 5); }, {"corpus has 20 tokens", "fewer than one batch"});
  expect_error([&] { moelab::LmBatches(torch::zeros({2, 10}, torch::kInt64), 2, 5); }, {"1-D"});
  moelab::LmBatches ok(stream, 10, 5);  // exactly batch * 2 tokens is enough
  EXPECT_EQ(ok.num_windows(), 1);
  expect_error([&] { ok.window(1); }, {"window 1"});
  expect_error([&] { ok.window(-1); }, {"window -1"});
}

}  // namespace
