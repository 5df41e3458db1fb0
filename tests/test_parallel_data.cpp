// Translation data: SentencePiece subword models (training, round trips, determinism, special ids,
// errors) and Multi30k-style parallel corpus directories, all on a small made-up German/English
// corpus written into a temporary directory.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>

#include "moelab/data/parallel_corpus.h"
#include "moelab/data/subword_model.h"
#include "moelab/util/error.h"
#include "error_message.h"
#include "test_util.h"

using namespace moelab;
using moelab::testing::contains;
using moelab::testing::error_message;
using moelab::testing::read_file;
using moelab::testing::TempDir;
using moelab::testing::write_file;

namespace {

// The smallest joint BPE vocabulary that is comfortably above the corpus's 33 distinct characters
// plus the 4 special pieces, and below the ~100 pieces BPE can merge from it.
constexpr int64_t kTinyVocab = 48;

// 48 sentence pairs "Ein Mann läuft im Park." / "A man runs in the park.", from every combination
// of 4 subjects, 4 verbs and 3 places: each line of train.de translates the same line of train.en.
struct TinyCorpus {
  std::vector<std::string> german, english;
};

TinyCorpus make_tiny_corpus() {
  const std::vector<std::pair<std::string, std::string>> subjects = {
      {"Ein Mann", "A man"}, {"Eine Frau", "A woman"}, {"Ein Kind", "A child"}, {"Ein Hund", "A dog"}};
  const std::vector<std::pair<std::string, std::string>> verbs = {
      {"läuft", "runs"}, {"spielt", "plays"}, {"sitzt", "sits"}, {"schläft", "sleeps"}};
  const std::vector<std::pair<std::string, std::string>> places = {
      {"im Park", "in the park"}, {"am Strand", "on the beach"}, {"auf der Straße", "on the street"}};
  TinyCorpus corpus;
  for (const auto& subject : subjects)
    for (const auto& verb : verbs)
      for (const auto& place : places) {
        corpus.german.push_back(subject.first + " " + verb.first + " " + place.first + ".");
        corpus.english.push_back(subject.second + " " + verb.second + " " + place.second + ".");
      }
  return corpus;
}

std::string lines_of(const std::vector<std::string>& sentences) {
  std::string text;
  for (const auto& sentence : sentences) text += sentence + "\n";
  return text;
}

// A directory holding the tiny corpus as train.de and train.en, and the options of a joint model.
class SubwordModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!sentencepiece_available()) GTEST_SKIP() << "moelab was built without SentencePiece";
    write_file(dir.file("train.de"), lines_of(corpus.german));
    write_file(dir.file("train.en"), lines_of(corpus.english));
    options.inputs = {dir.file("train.de"), dir.file("train.en")};
    options.vocab_size = kTinyVocab;
    options.output = dir.file("joint.model");
  }

  TempDir dir;
  TinyCorpus corpus = make_tiny_corpus();
  SubwordTrainOptions options;
};

}  // namespace

TEST_F(SubwordModelTest, RoundTripsEverySentenceWithTheFixedSpecialIds) {
  train_subword_model(options);
  const auto model = SubwordModel::load(options.output);
  EXPECT_EQ(model.size(), kTinyVocab);
  EXPECT_EQ(model.name(), options.output);
  EXPECT_EQ(model.pad_id(), 0);
  EXPECT_EQ(model.unk_id(), 1);
  EXPECT_EQ(model.bos_id(), 2);
  EXPECT_EQ(model.eos_id(), 3);
  for (const auto* sentences : {&corpus.german, &corpus.english})
    for (const auto& sentence : *sentences) {
      const auto ids = model.encode(sentence);
      ASSERT_FALSE(ids.empty());
      // Every character was in training, so nothing is unknown, and no <s> or </s> is added.
      for (const int64_t id : ids) {
        EXPECT_GT(id, model.eos_id()) << sentence;
        EXPECT_LT(id, model.size()) << sentence;
      }
      EXPECT_LT(ids.size(), sentence.size()) << "BPE merged nothing in: " << sentence;
      EXPECT_EQ(model.decode(ids), sentence);
    }
}

TEST_F(SubwordModelTest, DecodeSkipsPadAndBosAndStopsAtEos) {
  train_subword_model(options);
  const auto model = SubwordModel::load(options.output);
  const auto first = model.encode("Ein Hund schläft.");
  const auto second = model.encode("A dog sleeps.");
  std::vector<int64_t> ids = {model.bos_id()};
  ids.insert(ids.end(), first.begin(), first.end());
  ids.push_back(model.eos_id());
  ids.insert(ids.end(), second.begin(), second.end());
  ids.push_back(model.pad_id());
  EXPECT_EQ(model.decode(ids), "Ein Hund schläft.");
  EXPECT_EQ(model.decode({model.pad_id(), model.pad_id()}), "");
  EXPECT_TRUE(contains(error_message([&] { model.decode({model.size()}); }), "outside the vocabulary"));
}

TEST_F(SubwordModelTest, TrainingTwiceGivesTheSameBytesForBothTypes) {
  for (const std::string type : {"bpe", "unigram"}) {
    options.type = type;
    options.output = dir.file(type + "_a.model");
    train_subword_model(options);
    options.output = dir.file(type + "_b.model");
    train_subword_model(options);
    const std::string first = read_file(dir.file(type + "_a.model"));
    EXPECT_FALSE(first.empty());
    EXPECT_EQ(first, read_file(dir.file(type + "_b.model"))) << type;
    EXPECT_EQ(SubwordModel::load(dir.file(type + "_a.model")).size(), kTinyVocab) << type;
  }
}

TEST_F(SubwordModelTest, WritesOnlyTheModelAndItsVocabListing) {
  options.output = dir.file("models/joint.model");  // the folder is created
  train_subword_model(options);
  std::vector<std::string> written;
  for (const auto& entry : std::filesystem::directory_iterator(dir.file("models")))
    written.push_back(entry.path().filename().string());
  std::sort(written.begin(), written.end());
  EXPECT_EQ(written, (std::vector<std::string>{"joint.model", "joint.vocab"}));
  const std::string listing = read_file(dir.file("models/joint.vocab"));
  EXPECT_EQ(std::count(listing.begin(), listing.end(), '\n'), kTinyVocab);
  EXPECT_EQ(listing.rfind("<pad>\t", 0), 0u) << "the first piece listed is id 0";
}

TEST_F(SubwordModelTest, FromBytesBehavesLikeTheLoadedModel) {
  train_subword_model(options);
  const auto model = SubwordModel::load(options.output);
  EXPECT_EQ(model.bytes(), read_file(options.output));
  const auto copy = SubwordModel::from_bytes(model.bytes(), "run/tokenizer.model");
  EXPECT_EQ(copy.name(), "run/tokenizer.model");
  EXPECT_EQ(copy.size(), model.size());
  EXPECT_EQ(copy.bytes(), model.bytes());
  for (const auto& sentence : corpus.german) {
    EXPECT_EQ(copy.encode(sentence), model.encode(sentence));
    EXPECT_EQ(copy.decode(model.encode(sentence)), sentence);
  }
}

TEST_F(SubwordModelTest, LoadNamesAMissingOrBrokenFile) {
  const std::string missing = dir.file("missing.model");
  EXPECT_EQ(error_message([&] { SubwordModel::load(missing); }),
            "SentencePiece model " + missing + " does not exist");
  const std::string garbage = dir.file("garbage.model");
  write_file(garbage, "this is not a SentencePiece model\n\x01\x02\xff");
  const std::string message = error_message([&] { SubwordModel::load(garbage); });
  EXPECT_TRUE(contains(message, garbage)) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  const std::string empty = dir.file("empty.model");
  write_file(empty, "");
  EXPECT_TRUE(contains(error_message([&] { SubwordModel::load(empty); }), empty));
}

TEST_F(SubwordModelTest, RejectsBadOptionsWithOneLine) {
  auto bad = options;
  bad.type = "wordpiece";
  EXPECT_TRUE(contains(error_message([&] { train_subword_model(bad); }), "allowed: bpe, unigram"));

  bad = options;
  bad.inputs.push_back(dir.file("train.fr"));
  EXPECT_TRUE(contains(error_message([&] { train_subword_model(bad); }), dir.file("train.fr")));

  bad = options;
  bad.vocab_size = 4;
  EXPECT_TRUE(contains(error_message([&] { train_subword_model(bad); }), "vocabulary size 4"));

  bad = options;
  bad.vocab_size = 5000;
  const std::string too_large = error_message([&] { train_subword_model(bad); });
  EXPECT_TRUE(contains(too_large, "too large")) << too_large;
  EXPECT_EQ(too_large.find('\n'), std::string::npos) << too_large;

  bad = options;
  bad.vocab_size = 20;  // fewer than the corpus's characters
  const std::string too_small = error_message([&] { train_subword_model(bad); });
  EXPECT_TRUE(contains(too_small, "too small for the characters")) << too_small;

  // None of the failures left a file behind.
  EXPECT_FALSE(std::filesystem::exists(options.output));
  EXPECT_FALSE(std::filesystem::exists(dir.file("joint.vocab")));
}

// The command line: `moelab data spm` writes the model the library would, says what it wrote, and
// refuses a bad type in one line with a non-zero exit.
TEST_F(SubwordModelTest, DataSpmCommandWritesTheModelTheLibraryWrites) {
  using moelab::testing::run_moelab;
  using moelab::testing::sq;
  options.type = "unigram";
  train_subword_model(options);
  const std::string out = dir.file("cli/joint.model");
  const auto made = run_moelab("data spm --input " + sq(dir.file("train.de")) + " " + sq(dir.file("train.en")) +
                               " --vocab " + std::to_string(kTinyVocab) + " --type unigram --out " + sq(out));
  ASSERT_EQ(made.exit_code, 0) << made.output;
  EXPECT_TRUE(contains(made.output, out + ": unigram model, vocabulary 48, trained on ")) << made.output;
  EXPECT_EQ(read_file(out), read_file(options.output));
  const auto bad = run_moelab("data spm --input " + sq(dir.file("train.de")) + " --type wordpiece --out " +
                              sq(dir.file("bad.model")));
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_TRUE(contains(bad.output, "allowed: bpe, unigram")) << bad.output;
  EXPECT_LE(std::count(bad.output.begin(), bad.output.end(), '\n'), 1) << bad.output;
  EXPECT_FALSE(std::filesystem::exists(dir.file("bad.model")));
}

// A build without SentencePiece (or with AddressSanitizer) still trains nothing silently.
TEST(SubwordModelUnavailable, SaysWhy) {
  if (sentencepiece_available()) GTEST_SKIP() << "SentencePiece is available";
  const std::string message = error_message([] { SubwordModel::load("any.model"); });
  EXPECT_TRUE(contains(message, "libsentencepiece-dev") || contains(message, "sanitizer")) << message;
}

namespace {

// A Multi30k-like directory: train/val/test_2016_flickr in de and en, plus a later test set.
void make_corpus_directory(const std::string& dir) {
  const auto corpus = make_tiny_corpus();
  for (const std::string split : {"train", "val", "test_2016_flickr", "test_2017_flickr"}) {
    write_file(dir + "/" + split + ".de", lines_of(corpus.german));
    write_file(dir + "/" + split + ".en", lines_of(corpus.english));
  }
}

}  // namespace

TEST(ParallelCorpus, FindsTheFilesOfBothDirections) {
  TempDir dir;
  make_corpus_directory(dir.path());
  const auto de_en = find_parallel_corpus(dir.path(), "de", "en");
  EXPECT_EQ(de_en.train_source, dir.file("train.de"));
  EXPECT_EQ(de_en.train_target, dir.file("train.en"));
  EXPECT_EQ(de_en.valid_source, dir.file("val.de"));
  EXPECT_EQ(de_en.valid_target, dir.file("val.en"));
  EXPECT_EQ(de_en.test_source, dir.file("test_2016_flickr.de"));  // the first of the two test sets
  EXPECT_EQ(de_en.test_target, dir.file("test_2016_flickr.en"));

  const auto en_de = find_parallel_corpus(dir.path(), "en", "de", "test_2017_flickr");
  EXPECT_EQ(en_de.train_source, dir.file("train.en"));
  EXPECT_EQ(en_de.train_target, dir.file("train.de"));
  EXPECT_EQ(en_de.valid_source, dir.file("val.en"));
  EXPECT_EQ(en_de.test_source, dir.file("test_2017_flickr.en"));
  EXPECT_EQ(en_de.test_target, dir.file("test_2017_flickr.de"));

  const auto text = read_parallel_text(en_de.train_source, en_de.train_target);
  ASSERT_EQ(text.source.size(), 48u);
  EXPECT_EQ(text.source[0], "A man runs in the park.");
  EXPECT_EQ(text.target[0], "Ein Mann läuft im Park.");
  EXPECT_EQ(text.source_path, en_de.train_source);
}

TEST(ParallelCorpus, AcceptsValidAsTheValidationSplit) {
  TempDir dir;
  make_corpus_directory(dir.path());
  std::filesystem::rename(dir.file("val.de"), dir.file("valid.de"));
  std::filesystem::rename(dir.file("val.en"), dir.file("valid.en"));
  const auto files = find_parallel_corpus(dir.path(), "de", "en");
  EXPECT_EQ(files.valid_source, dir.file("valid.de"));
  EXPECT_EQ(files.valid_target, dir.file("valid.en"));
}

TEST(ParallelCorpus, ATestSetIsOptionalButHalfOfOneIsAnError) {
  TempDir dir;
  make_corpus_directory(dir.path());
  for (const std::string year : {"2016", "2017"})
    for (const std::string language : {"de", "en"})
      std::filesystem::remove(dir.file("test_" + year + "_flickr." + language));
  const auto files = find_parallel_corpus(dir.path(), "de", "en");
  EXPECT_EQ(files.valid_source, dir.file("val.de"));
  EXPECT_TRUE(files.test_source.empty());
  EXPECT_TRUE(files.test_target.empty());
  // Named, it must be there.
  EXPECT_TRUE(contains(error_message([&] { find_parallel_corpus(dir.path(), "de", "en", "test_2016_flickr"); }),
                       "test_2016_flickr.de"));
  // A source file without its target is not taken for "no test set".
  write_file(dir.file("test_2016_flickr.de"), "Ein Satz.\n");
  EXPECT_TRUE(contains(error_message([&] { find_parallel_corpus(dir.path(), "de", "en"); }), "test*.en"));
  EXPECT_TRUE(find_parallel_corpus(dir.path(), "en", "de").test_source.empty());
}

TEST(ParallelCorpus, NamesWhatIsMissingAndTheLanguagesThere) {
  TempDir dir;
  make_corpus_directory(dir.path());
  EXPECT_EQ(error_message([&] { find_parallel_corpus(dir.path(), "de", "fr"); }),
            "no train.fr in " + dir.path() + " (languages there: de, en)");
  EXPECT_TRUE(contains(error_message([&] { find_parallel_corpus(dir.path(), "de", "en", "test_2018"); }),
                       "test_2018.de"));
  EXPECT_TRUE(contains(error_message([&] { find_parallel_corpus(dir.path(), "en", "en"); }), "both 'en'"));
  EXPECT_TRUE(contains(error_message([&] { find_parallel_corpus(dir.file("nowhere"), "de", "en"); }),
                       dir.file("nowhere")));
  std::filesystem::remove(dir.file("val.en"));
  EXPECT_TRUE(contains(error_message([&] { find_parallel_corpus(dir.path(), "de", "en"); }),
                       "no val.en or valid.en"));
}

TEST(ParallelCorpus, ReadErrorsNameTheFileAndLine) {
  TempDir dir;
  write_file(dir.file("a.de"), "Eins\r\nZwei\r\nDrei\r\n");
  write_file(dir.file("a.en"), "One\nTwo\n");
  const std::string mismatch = error_message([&] { read_parallel_text(dir.file("a.de"), dir.file("a.en")); });
  EXPECT_EQ(mismatch, dir.file("a.de") + ":3: no line 3 in " + dir.file("a.en") + " (" + dir.file("a.de") +
                         " has 3 sentences, " + dir.file("a.en") + " has 2; line i of one must translate line i of "
                         "the other)");
  // The other way round, the target is the longer file.
  EXPECT_EQ(error_message([&] { read_parallel_text(dir.file("a.en"), dir.file("a.de")); })
                .rfind(dir.file("a.de") + ":3: no line 3 in " + dir.file("a.en") + " (", 0),
            0u);

  write_file(dir.file("b.en"), "One\nTwo\n \t\nFour\n");
  EXPECT_EQ(error_message([&] { read_parallel_text(dir.file("b.en"), dir.file("a.de")); }),
            dir.file("b.en") + ":3: empty sentence");
  EXPECT_TRUE(contains(error_message([&] { read_parallel_text(dir.file("a.de"), dir.file("none.en")); }),
                       dir.file("none.en")));

  write_file(dir.file("c.en"), "One\nTwo\nThree");  // no newline at the end, as some editors leave it
  const auto text = read_parallel_text(dir.file("a.de"), dir.file("c.en"));
  EXPECT_EQ(text.source, (std::vector<std::string>{"Eins", "Zwei", "Drei"}));  // '\r' removed
  EXPECT_EQ(text.target.back(), "Three");
}
