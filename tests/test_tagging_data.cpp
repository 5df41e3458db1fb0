// Tagging data and metrics: the CoNLL reader (both IOB schemes, documents, bad lines) and
// entity-level scores with conlleval's semantics, against hand-computed cases; the SQuAD split by
// article; singleton replacement.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <set>

#include "moelab/data/conll.h"
#include "moelab/data/singleton_unk.h"
#include "moelab/data/task_vocabulary.h"
#include "moelab/data/squad.h"
#include "moelab/data/squad_split.h"
#include "moelab/train/tagging_metrics.h"
#include "moelab/util/error.h"
#include "test_util.h"

using namespace moelab;
using moelab::testing::TempDir;
using moelab::testing::write_file;

namespace {

using Tags = std::vector<std::string>;

// Reading `path` must fail with a message that contains `where` (file and line).
void expect_read_error_at(const std::string& path, const std::string& where) {
  try {
    read_conll_file(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(where), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(ConllReader, ConvertsIob1ToIob2AndSaysWhichItFound) {
  TempDir dir;
  // IOB1: entities start with I-; B- only splits two adjacent entities of one type. The second
  // sentence ends inside an entity; the third has an I- right after O.
  write_file(dir.file("iob1.txt"),
             "-DOCSTART- -X- -X- O\n\n"
             "EU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\ncall NN I-NP O\n\n"
             "Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\nJohn NNP I-NP B-PER\n\n\n"
             "in IN B-PP O\nLondon NNP B-NP I-LOC\n"
             "-DOCSTART- -X- -X- O\n\nParis NNP B-NP I-LOC\n");
  const auto iob1 = read_conll_file(dir.file("iob1.txt"));
  EXPECT_EQ(iob1.scheme_found, "IOB1");
  EXPECT_EQ(iob1.documents, 2);
  ASSERT_EQ(iob1.sentences.size(), 4u);
  EXPECT_EQ(iob1.sentences[0].tokens, (Tags{"EU", "rejects", "German", "call"}));
  EXPECT_EQ(iob1.sentences[0].tags, (Tags{"B-ORG", "O", "B-MISC", "O"}));
  EXPECT_EQ(iob1.sentences[1].tags, (Tags{"B-PER", "I-PER", "B-PER"}));  // entity at sentence end kept
  EXPECT_EQ(iob1.sentences[2].tags, (Tags{"O", "B-LOC"}));
  EXPECT_EQ(iob1.entities_converted, 5);

  write_file(dir.file("iob2.txt"), "EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n");
  const auto iob2 = read_conll_file(dir.file("iob2.txt"));
  EXPECT_EQ(iob2.scheme_found, "IOB2");
  EXPECT_EQ(iob2.entities_converted, 0);
  EXPECT_EQ(iob2.sentences[1].tags, (Tags{"B-PER", "I-PER"}));
}

TEST(ConllReader, BadInputNamesTheLine) {
  TempDir dir;
  write_file(dir.file("one_column.txt"), "EU B-ORG\nrejects\n");
  expect_read_error_at(dir.file("one_column.txt"), "one_column.txt:2:");
  write_file(dir.file("bad_tag.txt"), "EU B-ORG\n\nrejects X-VERB\n");
  expect_read_error_at(dir.file("bad_tag.txt"), "bad_tag.txt:3:");
  write_file(dir.file("empty.txt"), "-DOCSTART- O\n\n\n");
  EXPECT_THROW(read_conll_file(dir.file("empty.txt")), Error);
  EXPECT_THROW(read_conll_file(dir.file("missing.txt")), Error);
}

TEST(EntityMetrics, EntitiesAreReadAsConllevalDoes) {
  const auto e = entities_of({"O", "I-ORG", "I-ORG", "B-PER", "I-LOC", "B-LOC", "I-LOC", "O", "I-MISC"});
  ASSERT_EQ(e.size(), 5u);
  EXPECT_EQ(e[0], (Entity{1, 3, "ORG"}));   // I- after O starts an entity
  EXPECT_EQ(e[1], (Entity{3, 4, "PER"}));
  EXPECT_EQ(e[2], (Entity{4, 5, "LOC"}));   // I- of another type starts a new one
  EXPECT_EQ(e[3], (Entity{5, 7, "LOC"}));
  EXPECT_EQ(e[4], (Entity{8, 9, "MISC"}));  // entity at the end
}

TEST(EntityMetrics, PartialMatchesCountAsErrorsAgainstHandComputedScores) {
  EntityScorer scorer;
  // Sentence 1: PER predicted one token short (a miss and a false positive), LOC exact.
  scorer.add({"B-PER", "I-PER", "O", "B-LOC"}, {"B-PER", "O", "O", "B-LOC"});
  // Sentence 2: ORG exact, an extra MISC predicted.
  scorer.add({"B-ORG", "O", "O"}, {"B-ORG", "O", "B-MISC"});
  const auto& all = scorer.overall();
  EXPECT_EQ(all.gold, 3);
  EXPECT_EQ(all.predicted, 4);
  EXPECT_EQ(all.correct, 2);
  EXPECT_DOUBLE_EQ(all.precision(), 0.5);
  EXPECT_DOUBLE_EQ(all.recall(), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(all.f1(), 2 * 0.5 * (2.0 / 3.0) / (0.5 + 2.0 / 3.0));  // 4/7
  EXPECT_DOUBLE_EQ(scorer.by_type().at("PER").f1(), 0.0);
  EXPECT_DOUBLE_EQ(scorer.by_type().at("LOC").f1(), 1.0);
  EXPECT_DOUBLE_EQ(scorer.by_type().at("MISC").precision(), 0.0);
  EXPECT_DOUBLE_EQ(scorer.token_accuracy(), 5.0 / 7.0);
  EXPECT_THROW(scorer.add({"O"}, {"O", "O"}), Error);
  EXPECT_DOUBLE_EQ(EntityScorer().overall().f1(), 0.0);  // nothing at all: 0, not NaN
}

namespace moelab {
namespace {

// A SQuAD document of `articles` articles, each with two paragraphs of its own and a question each.
nlohmann::json made_squad(int articles) {
  nlohmann::json squad = {{"version", "1.1"}, {"data", nlohmann::json::array()}};
  for (int a = 0; a < articles; ++a) {
    nlohmann::json paragraphs = nlohmann::json::array();
    for (int p = 0; p < 2; ++p)
      paragraphs.push_back({{"context", "paragraph " + std::to_string(a) + "." + std::to_string(p)},
                            {"qas", {{{"id", std::to_string(a * 2 + p)}, {"question", "which?"},
                                      {"answers", {{{"text", "paragraph"}, {"answer_start", 0}}}}}}}});
    squad["data"].push_back({{"title", "article" + std::to_string(a)}, {"paragraphs", paragraphs}});
  }
  return squad;
}

std::set<std::string> contexts_of(const nlohmann::json& document) {
  std::set<std::string> contexts;
  for (const auto& article : document["data"])
    for (const auto& paragraph : article["paragraphs"]) contexts.insert(paragraph["context"].get<std::string>());
  return contexts;
}

TEST(SquadSplit, WholeArticlesOnEachSideDisjointAndRepeatableBySeed) {
  const auto squad = made_squad(10);
  const auto split = split_squad_by_article(squad, 6, 2, 7, "made");
  EXPECT_EQ(split.articles[0], 6);
  EXPECT_EQ(split.articles[1], 2);
  EXPECT_EQ(split.articles[2], 2);
  EXPECT_EQ(split.paragraphs[0], 12);
  EXPECT_EQ(split.questions[2], 4);
  const auto train = contexts_of(split.train), valid = contexts_of(split.valid), test = contexts_of(split.test);
  EXPECT_EQ(train.size() + valid.size() + test.size(), 20u);
  for (const auto& context : test) {
    EXPECT_EQ(train.count(context), 0u) << context;
    EXPECT_EQ(valid.count(context), 0u) << context;
  }
  for (const auto& context : valid) EXPECT_EQ(train.count(context), 0u) << context;
  // Both paragraphs of an article stay together.
  for (const auto& article : split.test["data"]) EXPECT_EQ(article["paragraphs"].size(), 2u);
  EXPECT_EQ(split_squad_by_article(squad, 6, 2, 7, "made").test, split.test);
  bool another_split = false;  // some other seed must give another test side
  for (uint64_t seed = 8; seed < 20 && !another_split; ++seed)
    another_split = split_squad_by_article(squad, 6, 2, seed, "made").test != split.test;
  EXPECT_TRUE(another_split);
  EXPECT_TRUE(split_squad_by_article(squad, 9, 0, 1, "made").valid.is_null());
  // Each side says what it is, and the reader hands that on to the run's summary.
  const auto read = parse_squad_json(split.test.dump(), "test.json", SquadOptions{});
  EXPECT_EQ(read.questions, 4);
  EXPECT_NE(read.provenance.find("test side of made split by article (seed 7): 2 of its 10 articles"), std::string::npos)
      << read.provenance;
  EXPECT_NE(read.provenance.find("not the official SQuAD training set"), std::string::npos);
  EXPECT_TRUE(parse_squad_json(squad.dump(), "plain.json", SquadOptions{}).provenance.empty());
}

TEST(SquadSplit, RefusesFilesWithoutArticlesAndCountsThatLeaveNoTestSide) {
  EXPECT_THROW(split_squad_by_article(made_squad(0), 1, 0, 1, "made"), Error);
  EXPECT_THROW(split_squad_by_article(nlohmann::json::array(), 1, 0, 1, "made"), Error);
  EXPECT_THROW(split_squad_by_article(made_squad(4), 4, 0, 1, "made"), Error);
  EXPECT_THROW(split_squad_by_article(made_squad(4), 3, 1, 1, "made"), Error);
  EXPECT_THROW(split_squad_by_article(made_squad(4), 0, 1, 1, "made"), Error);
  EXPECT_NO_THROW(split_squad_by_article(made_squad(4), 3, 0, 1, "made"));
}

}  // namespace
}  // namespace moelab

TEST(SingletonUnk, ReplacesOnlyWordsSeenOnceAtTheGivenRate) {
  const std::unordered_map<std::string, int64_t> counts = {{"the", 7}, {"king", 2}, {"rare", 1}, {"odd", 1}};
  TaskVocabularyOptions options;
  const auto vocabulary = build_task_vocabulary(counts, {}, options);
  const auto& words = vocabulary.words;
  const auto the = words.id("the"), king = words.id("king"), rare = words.id("rare"), odd = words.id("odd");
  const auto unk = words.unk_id();
  ASSERT_NE(rare, unk);
  // A batch of 40,000 tokens, a quarter each: two frequent words, two singletons.
  const auto ids = torch::tensor(std::vector<int64_t>{the, king, rare, odd}, torch::kLong).repeat({10000});

  EXPECT_TRUE(torch::equal(SingletonUnk(words, counts, 0.0).apply(ids), ids));
  const SingletonUnk always(words, counts, 1.0);
  EXPECT_EQ(always.singletons(), 2);
  const auto all = always.apply(ids).view({-1, 4});
  EXPECT_TRUE((all.select(1, 0) == the).all().item<bool>());
  EXPECT_TRUE((all.select(1, 1) == king).all().item<bool>());
  EXPECT_TRUE((all.select(1, 2) == unk).all().item<bool>());
  EXPECT_TRUE((all.select(1, 3) == unk).all().item<bool>());

  torch::manual_seed(3);
  const auto some = SingletonUnk(words, counts, 0.3).apply(ids).view({-1, 4});
  EXPECT_TRUE((some.select(1, 0) == the).all().item<bool>());
  EXPECT_TRUE((some.select(1, 1) == king).all().item<bool>());
  for (const int64_t column : {2, 3}) {
    const auto replaced = (some.select(1, column) == unk).to(torch::kDouble).mean().item<double>();
    EXPECT_NEAR(replaced, 0.3, 0.02) << "column " << column;  // 10,000 draws: std 0.005
    EXPECT_TRUE(((some.select(1, column) == unk) | (some.select(1, column) == (column == 2 ? rare : odd))).all().item<bool>());
  }

  // Words data.min_count already cut are <unk> anyway: nothing to replace.
  options.min_count = 2;
  const auto cut = build_task_vocabulary(counts, {}, options);
  EXPECT_EQ(SingletonUnk(cut.words, counts, 0.5).singletons(), 0);
  EXPECT_FALSE(SingletonUnk(cut.words, counts, 0.5).active());
  EXPECT_THROW(SingletonUnk(words, counts, 1.5), Error);
}
