// Tagging and QA: GloVe vectors, SQuAD reading and offsets, the official EM / F1, packed batches,
// span decoding, and tiny end-to-end runs that must learn a made pattern (and resume exactly).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "moelab/data/conll.h"
#include "moelab/data/conll_to_squad.h"
#include "moelab/data/glove.h"
#include "moelab/data/packed_batches.h"
#include "moelab/data/squad.h"
#include "moelab/data/task_vocabulary.h"
#include "moelab/data/word_overlap.h"
#include "moelab/models/model_from_config.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/models/sequence_tagger.h"
#include "moelab/models/span_extractor.h"
#include "moelab/train/qa_metrics.h"
#include "moelab/train/task_run_evaluation.h"
#include "moelab/train/training_task.h"
#include "moelab/train/trainer.h"
#include "moelab/util/error.h"
#include "error_message.h"
#include "test_util.h"

using namespace moelab;
using moelab::testing::contains;
using moelab::testing::error_message;
using moelab::testing::TempDir;
using moelab::testing::write_file;

namespace {

// CoNLL sentences with a learnable pattern: names from small lists are entities (one of them two
// tokens long), everything else is O.
std::string made_conll(int sentences, uint32_t seed) {
  const std::vector<std::string> filler = {"the", "met", "in", "said", "a", "visit", "to", "from", "and", "today"};
  const std::vector<std::pair<std::vector<std::string>, std::string>> entities = {
      {{"alice"}, "PER"}, {{"bob"}, "PER"}, {{"paris"}, "LOC"}, {{"new", "york"}, "LOC"}, {{"acme"}, "ORG"}};
  std::mt19937 rng(seed);
  std::string text = "-DOCSTART- O\n\n";
  for (int s = 0; s < sentences; ++s) {
    const int length = 4 + static_cast<int>(rng() % 8);
    for (int i = 0; i < length; ++i) {
      if (rng() % 4 == 0) {
        const auto& [words, type] = entities[rng() % entities.size()];
        for (size_t w = 0; w < words.size(); ++w) text += words[w] + (w == 0 ? " B-" : " I-") + type + "\n";
      } else {
        text += filler[rng() % filler.size()] + " O\n";
      }
    }
    text += "\n";
  }
  return text;
}

Config tiny_task_config(const std::string& task, const std::string& dir, const std::string& ext) {
  auto config = Config::defaults();
  for (const auto* assignment :
       {"model.embed=16", "model.hidden=16", "model.dropout=0.0", "moe.experts=4", "moe.k=2",
        "moe.router=topk_mask", "moe.expert_hidden=16", "moe.balance.importance=0.01", "moe.balance.load=0.0",
        "train.batch=8", "train.optimizer=adam", "train.lr=0.01", "train.warmup=10", "train.clip=5.0",
        "train.log_every=20", "train.checkpoint_every=20", "train.threads=1", "train.grouped_path=loop"})
    config.apply_override(assignment);
  config.set("model.task", task);
  config.set("data.train", dir + "/train" + ext);
  config.set("data.valid", dir + "/valid" + ext);
  config.set("data.test", dir + "/test" + ext);
  return config;
}

// What `moelab eval --run run_directory` asks, before any options.
TaskRunEvaluationRequest evaluation_of(const std::string& run_directory) {
  TaskRunEvaluationRequest request;
  request.run_directory = run_directory;
  return request;
}

// Trains `config` into out_dir without progress output.
TrainResult train_quietly(Config config, const std::string& out_dir) {
  TrainRequest request;
  request.config = std::move(config);
  request.out_dir = out_dir;
  request.quiet = true;
  return train_model(request);
}

// SQuAD-format questions "what follows W ?" over contexts of made-up words, each seen about once:
// the answer is the word after W. Only the overlap between question and context can find W, since
// held-out words are all <unk> to the vocabulary.
std::string made_follow_questions(int questions, uint32_t seed) {
  std::mt19937 rng(seed);
  auto word = [&] { return fmt::format("w{}", rng() % 1000000); };
  nlohmann::json paragraphs = nlohmann::json::array();
  for (int q = 0; q < questions; ++q) {
    std::vector<std::string> words;
    while (words.size() < 10) {
      auto w = word();
      if (std::find(words.begin(), words.end(), w) == words.end()) words.push_back(std::move(w));
    }
    const size_t asked = rng() % (words.size() - 1);
    std::string context;
    size_t answer_start = 0;
    for (size_t i = 0; i < words.size(); ++i) {
      if (i > 0) context += " ";
      if (i == asked + 1) answer_start = context.size();
      context += words[i];
    }
    paragraphs.push_back(
        {{"context", context},
         {"qas",
          {{{"id", fmt::format("q{}", q)},
            {"question", "what follows " + words[asked] + " ?"},
            {"answers", {{{"text", words[asked + 1]}, {"answer_start", answer_start}}}}}}}});
  }
  return nlohmann::json{{"version", "1.1"}, {"data", {{{"title", "made"}, {"paragraphs", paragraphs}}}}}.dump();
}

}  // namespace

TEST(WordOverlap, MarksWordsFoundOnTheOtherSideAsSpelledAndInLowerCase) {
  const auto overlap = word_overlap({"Who", "wrote", "Hamlet", "?"}, {"Shakespeare", "wrote", "hamlet", "."});
  // Per token: [as spelled, in lower case].
  EXPECT_EQ(overlap.question, (std::vector<float>{0, 0, 1, 1, 0, 1, 0, 0}));
  EXPECT_EQ(overlap.context, (std::vector<float>{0, 0, 1, 1, 0, 1, 0, 0}));
  const auto none = word_overlap({"a"}, {});
  EXPECT_EQ(none.question, (std::vector<float>{0, 0}));
  EXPECT_TRUE(none.context.empty());
}

TEST(Glove, ReadsOnlyWantedRowsAndBuildsTheEmbeddingTable) {
  TempDir dir;
  write_file(dir.file("glove.txt"), "the 0.1 0.2 0.3\ncat -1 0 1.5\n<unk> 9 9 9\ndog 2 2 2\n");
  const auto glove = read_glove_file(dir.file("glove.txt"), {"cat", "dog", "zebra"});
  EXPECT_EQ(glove.dim, 3);
  EXPECT_EQ(glove.lines_read, 4);
  EXPECT_EQ(glove.rows.size(), 2u);  // "the" was not asked for, "zebra" is not in the file
  ASSERT_TRUE(glove.has_unk);
  EXPECT_TRUE(torch::equal(glove.vectors[glove.rows.at("cat")], torch::tensor({-1.0f, 0.0f, 1.5f})));

  int64_t found = 0;
  const auto matrix = embedding_matrix({"<pad>", "<unk>", "dog", "zebra", "cat"}, glove, &found);
  EXPECT_EQ(found, 2);
  EXPECT_TRUE(torch::equal(matrix[0], torch::zeros({3})));
  EXPECT_TRUE(torch::equal(matrix[1], torch::tensor({9.0f, 9.0f, 9.0f})));
  EXPECT_TRUE(torch::equal(matrix[2], torch::tensor({2.0f, 2.0f, 2.0f})));
  EXPECT_GT(matrix[3].abs().sum().item<double>(), 0.0);  // random, at the file's scale
  EXPECT_TRUE(torch::equal(matrix[4], torch::tensor({-1.0f, 0.0f, 1.5f})));

  // Without an <unk> row, <unk> is the mean of the kept rows.
  write_file(dir.file("no_unk.txt"), "cat 1 2\ndog 3 4\n");
  const auto mean = embedding_matrix({"<unk>"}, read_glove_file(dir.file("no_unk.txt"), {"cat", "dog"}), nullptr);
  EXPECT_TRUE(torch::allclose(mean[0], torch::tensor({2.0f, 3.0f})));
}

TEST(Glove, BadFilesGiveOneLineErrors) {
  TempDir dir;
  write_file(dir.file("mismatch.txt"), "the 0.1 0.2 0.3\ncat 1 2\n");
  EXPECT_TRUE(contains(error_message([&] { read_glove_file(dir.file("mismatch.txt"), {"cat"}); }),
                       "mismatch.txt:2: 2 values, but the first vector has 3"));
  write_file(dir.file("word.txt"), "the 0.1 0.2\ncat 1 x\n");
  EXPECT_TRUE(contains(error_message([&] { read_glove_file(dir.file("word.txt"), {"cat"}); }), "word.txt:2: value 2 is not a number"));
  for (const char* bad : {"nan", "inf", "-INF", "1e39", "-3.5e40"}) {
    write_file(dir.file("nonfinite.txt"), fmt::format("the 0.1 0.2\ncat 1 {}\n", bad));
    const auto message = error_message([&] { read_glove_file(dir.file("nonfinite.txt"), {"cat"}); });
    EXPECT_TRUE(contains(message, "nonfinite.txt:2: value 2 is not a finite float")) << bad << ": " << message;
  }
  write_file(dir.file("tiny.txt"), "cat 1e-30 -2.5e3\n");  // small and ordinary values stay accepted
  EXPECT_EQ(read_glove_file(dir.file("tiny.txt"), {"cat"}).vectors.size(1), 2);
  write_file(dir.file("empty.txt"), "\n");
  EXPECT_TRUE(contains(error_message([&] { read_glove_file(dir.file("empty.txt"), {}); }), "holds no vector"));
  EXPECT_TRUE(contains(error_message([&] { read_glove_file(dir.file("absent.txt"), {}); }), "cannot read GloVe file"));

  // The model's embedding width must match the file's.
  write_file(dir.file("glove.txt"), "cat 1 2\n");
  TaskVocabularyOptions options;
  options.embeddings_path = dir.file("glove.txt");
  options.embed_dim = 50;
  EXPECT_TRUE(contains(error_message([&] { build_task_vocabulary({{"cat", 1}}, {}, options); }),
                       "holds 2-dimensional vectors but model.embed = 50"));
}

TEST(TaskVocabulary, KeepsTrainWordsAndPretrainedHeldOutWords) {
  TempDir dir;
  write_file(dir.file("glove.txt"), "cat 1 2\nparis 3 4\nrome 5 6\n");
  TaskVocabularyOptions options;
  options.embeddings_path = dir.file("glove.txt");
  options.embed_dim = 2;
  options.min_count = 2;
  options.specials = {"<sep>"};
  const auto vocab = build_task_vocabulary({{"cat", 1}, {"the", 3}, {"rare", 1}}, {"paris", "unseen"}, options);
  // <pad>, <unk>, <sep>, then by frequency: the (3), cat (1, in GloVe), paris (held out, in GloVe).
  EXPECT_EQ(vocab.words.tokens(), (std::vector<std::string>{"<pad>", "<unk>", "<sep>", "the", "cat", "paris"}));
  EXPECT_EQ(vocab.embeddings_found, 2);
  EXPECT_EQ(lookup_form("New-York", true), "new-york");
}

TEST(Squad, TokenisesWithOffsetsAndKeepsPunctuation) {
  const auto tokens = tokenize_with_offsets("Tom's hat, (1990) \xE2\x80\x94 caf\xC3\xA9!");
  std::vector<std::string> texts;
  for (const auto& t : tokens) texts.push_back(t.text);
  EXPECT_EQ(texts, (std::vector<std::string>{"Tom", "'", "s", "hat", ",", "(", "1990", ")", "\xE2\x80\x94",
                                             "caf\xC3\xA9", "!"}));
  EXPECT_EQ(tokens[3].begin, 6);
  EXPECT_EQ(tokens[3].end, 9);
  EXPECT_EQ(utf8_byte_offset("caf\xC3\xA9 ok", 5), 6);  // code point 5 is 'o', after the 2-byte é
  EXPECT_EQ(utf8_byte_offset("ab", 3), -1);
}

TEST(Squad, MapsAnswersToTokensWithRepeatsAndUnicode) {
  // "Tom" appears twice; answer_start picks the second. The second context puts a 2-byte é and a
  // 3-byte dash before the answer, so code-point and byte offsets differ.
  const std::string json = R"({"data": [{"title": "t", "paragraphs": [
    {"context": "Tom met Ann. Later, Tom left!", "qas": [
      {"id": "q1", "question": "Who left?", "answers": [{"text": "Tom", "answer_start": 20}, {"text": "Tom", "answer_start": 0}]},
      {"id": "q2", "question": "Who was met?", "answers": [{"text": "Ann", "answer_start": 8}]}]},
    {"context": "Caf\u00e9 \u2014 Paris, France.", "qas": [
      {"id": "q3", "question": "Where?", "answers": [{"text": "Paris, France", "answer_start": 7}]},
      {"id": "q4", "question": "Nothing?", "answers": []}]}]}]})";
  const auto data = parse_squad_json(json, "made.json", SquadOptions{});
  ASSERT_EQ(data.examples.size(), 3u);
  EXPECT_EQ(data.questions, 4);
  EXPECT_EQ(data.dropped_no_answer, 1);
  EXPECT_EQ(data.answer_text_mismatch, 0);
  const auto& q1 = data.examples[0];
  // Tokens: Tom met Ann . Later , Tom left !
  EXPECT_EQ(q1.answer_start, 6);
  EXPECT_EQ(q1.answer_end, 6);
  EXPECT_EQ(q1.answers.size(), 2u);
  EXPECT_EQ(q1.question_tokens, (std::vector<std::string>{"Who", "left", "?"}));
  EXPECT_EQ(data.examples[1].answer_start, 2);
  const auto& q3 = data.examples[2];
  // Tokens: Café — Paris , France .
  EXPECT_EQ(q3.answer_start, 2);
  EXPECT_EQ(q3.answer_end, 4);
  EXPECT_EQ(q3.context_tokens[2].text, "Paris");

  SquadOptions short_contexts;
  short_contexts.max_context_tokens = 7;
  const auto filtered = parse_squad_json(json, "made.json", short_contexts);
  EXPECT_EQ(filtered.dropped_long_context, 2);  // the 9-token context's two questions
  EXPECT_EQ(filtered.examples.size(), 1u);
  SquadOptions short_answers;
  short_answers.max_answer_tokens = 2;
  EXPECT_EQ(parse_squad_json(json, "made.json", short_answers).dropped_long_answer, 1);
}

TEST(Squad, BadInputGivesOneLineErrors) {
  const std::string outside = R"({"data": [{"paragraphs": [{"context": "Short text.", "qas": [
      {"id": "far", "question": "Where?", "answers": [{"text": "text", "answer_start": 40}]}]}]}]})";
  const auto message = error_message([&] { parse_squad_json(outside, "bad.json", SquadOptions{}); });
  EXPECT_TRUE(contains(message, "bad.json: question far: answer offset 40")) << message;
  EXPECT_TRUE(contains(message, "outside its context of 11 characters")) << message;
  const std::string fractional = R"({"data": [{"paragraphs": [{"context": "Short text.", "qas": [
      {"id": "frac", "question": "What?", "answers": [{"text": "text", "answer_start": 6.7}]}]}]}]})";
  const auto frac_message = error_message([&] { parse_squad_json(fractional, "f.json", SquadOptions{}); });
  EXPECT_TRUE(contains(frac_message, "f.json: question frac: answer_start must be a whole number of characters, got 6.7"))
      << frac_message;
  std::string quoted = fractional;
  quoted.replace(quoted.find("6.7"), 3, "\"6\"");
  EXPECT_TRUE(contains(error_message([&] { parse_squad_json(quoted, "q.json", SquadOptions{}); }), "answer_start must be"));
  EXPECT_TRUE(contains(error_message([&] { parse_squad_json("{\"data\": 3}", "x.json", SquadOptions{}); }), "x.json"));
  EXPECT_TRUE(contains(error_message([&] { parse_squad_json("not json", "y.json", SquadOptions{}); }), "not valid JSON"));
  EXPECT_TRUE(contains(error_message([&] { read_squad_file("/nonexistent/squad.json", SquadOptions{}); }), "does not exist"));
}

TEST(QaMetrics, FollowTheOfficialSquadDefinitions) {
  EXPECT_EQ(normalize_answer("The  Eiffel-Tower!"), "eiffeltower");
  EXPECT_EQ(normalize_answer("an apple and a pear"), "apple and pear");
  EXPECT_EQ(exact_match_score("the Eiffel Tower", "Eiffel Tower."), 1.0);
  EXPECT_EQ(exact_match_score("Eiffel", "Eiffel Tower"), 0.0);
  // prediction "eiffel tower in paris" vs gold "eiffel tower": 2 common, P = 2/4, R = 1.
  EXPECT_NEAR(f1_score("Eiffel Tower in Paris", "the Eiffel Tower"), 2 * 0.5 * 1.0 / 1.5, 1e-12);
  EXPECT_EQ(f1_score("London", "Paris"), 0.0);
  // Repeated words count as often as they occur in both.
  EXPECT_NEAR(f1_score("new new york", "new york"), 2 * (2.0 / 3) * 1.0 / (2.0 / 3 + 1.0), 1e-12);

  QaScorer scorer;
  scorer.add("Paris", {"London", "paris"}, 3, 3, 3, 3);      // EM via the second gold answer
  scorer.add("in Paris", {"Paris"}, 2, 3, 3, 3);             // partial: F1 2/3, end right
  EXPECT_EQ(scorer.count(), 2);
  EXPECT_DOUBLE_EQ(scorer.exact_match(), 50.0);
  EXPECT_NEAR(scorer.f1(), 100 * (1.0 + 2.0 / 3) / 2, 1e-9);
  EXPECT_DOUBLE_EQ(scorer.start_accuracy(), 50.0);
  EXPECT_DOUBLE_EQ(scorer.end_accuracy(), 100.0);
}

TEST(PackedBatches, PackTimeMajorAndGroupByLength) {
  const std::vector<int64_t> a = {1, 2, 3}, b = {4, 5}, c = {6};
  const auto packed = pack_sequences({&a, &b, &c});
  EXPECT_TRUE(torch::equal(packed.values, torch::tensor({1, 4, 6, 2, 5, 3}, torch::kLong)));
  EXPECT_TRUE(torch::equal(packed.batch_sizes, torch::tensor({3, 2, 1}, torch::kLong)));
  EXPECT_EQ(packed.rows[1], (std::vector<int64_t>{1, 4}));
  EXPECT_TRUE(contains(error_message([&] { pack_sequences({&c, &a}); }), "longest first"));

  const auto batches = length_grouped_batches({2, 9, 5, 9, 1}, 2, -1);
  EXPECT_EQ(batches, (std::vector<std::vector<int64_t>>{{1, 3}, {2, 0}, {4}}));
  const auto shuffled = length_grouped_batches({2, 9, 5, 9, 1}, 2, 7);
  EXPECT_EQ(shuffled.size(), 3u);
  EXPECT_EQ(shuffled, length_grouped_batches({2, 9, 5, 9, 1}, 2, 7));  // same seed, same order
}

TEST(SequenceTagger, ASentenceScoresTheSameWhateverItIsBatchedWith) {
  // Packing means no padding reaches the LSTMs, the router or the loss: a short sentence batched
  // with a long one gets exactly the scores it gets alone, with character features (padded per
  // word) and the CRF's Viterbi decoding too.
  const std::vector<std::string> tags = {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"};
  for (const bool extras : {false, true}) {
    torch::manual_seed(3);
    auto config = Config::defaults();
    for (const auto* a : {"model.task=tagging", "data.train=train.txt", "data.valid=valid.txt", "model.embed=8", "model.hidden=8", "moe.experts=4", "moe.k=2",
                          "moe.router=topk_mask", "moe.expert_hidden=8", "moe.balance.load=0"})
      config.apply_override(a);
    if (extras)
      for (const auto* a : {"model.char_embed=4", "model.char_hidden=3", "model.char_encoder=bilstm", "model.decoder=crf"})
        config.apply_override(a);
    SequenceTagger tagger(encoder_options(config, 30), tags, config.get_string("model.decoder"));
    tagger->eval();
    const std::vector<int64_t> long_sentence = {3, 4, 5, 6, 7, 8, 9}, short_sentence = {10, 11, 12};
    const std::vector<std::string> long_words = {"In", "the", "beginning", "God", "created", "the", "heaven"},
                                   short_words = {"Paris", "is", "x"};
    auto spelling = [&](const PackedBatch& packed, const std::vector<const std::vector<std::string>*>& sentences) {
      if (!extras) return torch::Tensor();
      std::vector<const std::string*> words(static_cast<size_t>(packed.tokens()));
      for (size_t b = 0; b < sentences.size(); ++b)
        for (size_t t = 0; t < sentences[b]->size(); ++t) words[static_cast<size_t>(packed.rows[b][t])] = &(*sentences[b])[t];
      return word_bytes(words);
    };
    const auto both = pack_sequences({&long_sentence, &short_sentence});
    const auto alone = pack_sequences({&short_sentence});
    const auto encoded_both = tagger(both.values, both.batch_sizes, spelling(both, {&long_words, &short_words}));
    const auto encoded_alone = tagger(alone.values, alone.batch_sizes, spelling(alone, {&short_words}));
    const auto tags_both = tagger->predict(encoded_both, both.batch_sizes);
    const auto tags_alone = tagger->predict(encoded_alone, alone.batch_sizes);
    for (size_t t = 0; t < short_sentence.size(); ++t) {
      EXPECT_TRUE(torch::allclose(encoded_both.scores[both.rows[1][t]], encoded_alone.scores[alone.rows[0][t]], 1e-5,
                                  1e-6))
          << t << (extras ? " (characters, CRF)" : "");
      EXPECT_EQ(tags_both[both.rows[1][t]].item<int64_t>(), tags_alone[alone.rows[0][t]].item<int64_t>()) << t;
    }
  }
  auto config = Config::defaults();
  for (const auto* a : {"model.task=tagging", "data.train=train.txt", "data.valid=valid.txt", "model.char_embed=4"})
    config.apply_override(a);
  SequenceTagger needs_spelling(encoder_options(config, 30), tags);
  const std::vector<int64_t> sentence = {3, 4};
  const auto packed = pack_sequences({&sentence});
  EXPECT_THROW(needs_spelling(packed.values, packed.batch_sizes), Error);
}

TEST(SpanExtractor, DecodesTheBestSpanWithEndAfterStartWithinTheLimit) {
  SpanLogits logits;
  const double inf = std::numeric_limits<double>::infinity();
  // Row 0: the best end (1) lies before the best start (3); row 1 masks its last position.
  logits.start = torch::tensor({{0.0, 5.0, 0.0, 6.0}, {0.0, 0.0, 9.0, -inf}});
  logits.end = torch::tensor({{0.0, 7.0, 0.0, 4.0}, {0.0, 3.0, 0.0, -inf}});
  const auto spans = best_spans(logits, 0);
  // Row 0 candidates: (1,1) = 5+7 = 12, (1,3) = 9, (3,3) = 10 -> (1,1).
  EXPECT_EQ(spans[0][0].item<int64_t>(), 1);
  EXPECT_EQ(spans[0][1].item<int64_t>(), 1);
  // Row 1: (2,2) = 9 + 0 beats (1,1) = 0 + 3; never end < start, never the masked position 3.
  EXPECT_EQ(spans[1][0].item<int64_t>(), 2);
  EXPECT_EQ(spans[1][1].item<int64_t>(), 2);
  logits.start = torch::tensor({{9.0, 0.0, 0.0, 0.0}});
  logits.end = torch::tensor({{0.0, 0.0, 0.0, 9.0}});
  const auto limited = best_spans(logits, 2);  // (0, 3) would be 4 tokens
  EXPECT_LE(limited[0][1].item<int64_t>() - limited[0][0].item<int64_t>(), 1);
  EXPECT_EQ(best_spans(logits, 0)[0][1].item<int64_t>(), 3);
}

// A tiny tagger trained on made CoNLL files in `dir` (train 300 sentences, valid and test 60).
TrainResult train_made_tagger(const TempDir& dir, const std::vector<std::string>& overrides) {
  write_file(dir.file("train.txt"), made_conll(300, 1));
  write_file(dir.file("valid.txt"), made_conll(60, 2));
  write_file(dir.file("test.txt"), made_conll(60, 3));
  auto config = tiny_task_config("tagging", dir.path(), ".txt");
  for (const auto& o : overrides) config.apply_override(o);
  return train_quietly(std::move(config), dir.file("run"));
}

TEST(TaskTraining, TaggerLearnsAMadePatternAndReportsEntityF1) {
  TempDir dir;
  const auto result = train_made_tagger(dir, {"train.steps=400"});
  ASSERT_TRUE(result.finished);
  const auto& s = result.summary;
  EXPECT_GT(s["valid_token_acc"].get<double>(), 97.0) << s.dump();
  EXPECT_GT(s["valid_entity_f1"].get<double>(), 90.0) << s.dump();
  EXPECT_GT(s["test_entity_f1"].get<double>(), 90.0);
  EXPECT_TRUE(s["valid_entity_by_type"].contains("LOC"));
  EXPECT_EQ(s["moe_layers"].size(), 1u);
  EXPECT_EQ(s["moe_layers"][0]["expert_load"].size(), 4u);
  EXPECT_GT(s["params_total"].get<int64_t>(), s["params_active_per_token"].get<int64_t>());
  EXPECT_EQ(s["data"]["train"]["scheme_found"], "IOB2");
  EXPECT_TRUE(moelab::testing::read_file(dir.file("run/metrics.jsonl")).find("valid_entity_f1") != std::string::npos);
}

// A batch of one sentence asks train.accumulate = 2 for more micro-batches than it has examples: the
// step runs as one, with the whole loss and gradient and a balance loss pooled over one part.
TEST(TaskTraining, BatchesSmallerThanTheMicroBatchesTrainLikeWholeOnes) {
  auto losses = [](int64_t accumulate) {
    TempDir dir;
    const auto result = train_made_tagger(
        dir, {"train.steps=5", "train.log_every=1", "train.batch=1", "train.optimizer=sgd", "train.lr=0.5",
              "train.clip=0", "moe.balance.importance=1", "moe.balance.scope=global",
              "train.accumulate=" + std::to_string(accumulate)});
    EXPECT_TRUE(result.finished);
    return moelab::testing::training_losses(dir.file("run"));
  };
  const auto whole = losses(1), split = losses(2);
  ASSERT_EQ(whole.size(), 5u);
  ASSERT_EQ(split.size(), whole.size());
  for (size_t i = 0; i < whole.size(); ++i) EXPECT_NEAR(split[i], whole[i], 1e-5 * whole[i]) << "step " << i + 1;
}

// The split itself: nearly equal contiguous parts, the first size % n one longer, and never an empty
// one (the trainer asks micro_batches_for first, so an empty part means a task split differently).
TEST(TaskTraining, MicroBatchesAreNearlyEqualContiguousPartsAndNeverEmpty) {
  const std::vector<int64_t> five = {10, 11, 12, 13, 14};
  EXPECT_EQ(micro_batch_of(five, StepSlice{3, 0, 2}), (std::vector<int64_t>{10, 11, 12}));
  EXPECT_EQ(micro_batch_of(five, StepSlice{3, 1, 2}), (std::vector<int64_t>{13, 14}));
  EXPECT_EQ(micro_batches_for(1, 2), 1);
  EXPECT_EQ(micro_batches_for(0, 4), 1);
  EXPECT_EQ(micro_batches_for(5, 2), 2);
  try {
    micro_batch_of({7}, StepSlice{4, 1, 2});
    ADD_FAILURE() << "an empty micro-batch was returned";
  } catch (const moelab::Error& e) {
    EXPECT_EQ(std::string(e.what()), "training step 4: micro-batch 1 of 2 has no example");
  }
  EXPECT_THROW(micro_batch_of(five, StepSlice{1, 2, 2}), moelab::Error);
  EXPECT_THROW(micro_batch_of(five, StepSlice{1, 0, 0}), moelab::Error);
}

TEST(TaskTraining, CrfTaggerLearnsAMadePattern) {
  TempDir dir;
  // The CRF leaves its early plateau (every token O-like) later than the softmax does at batch 8.
  const auto result = train_made_tagger(dir, {"model.decoder=crf", "train.batch=32", "train.steps=500"});
  ASSERT_TRUE(result.finished);
  const auto& s = result.summary;
  EXPECT_GT(s["valid_token_acc"].get<double>(), 97.0) << s.dump();
  EXPECT_GT(s["valid_entity_f1"].get<double>(), 90.0) << s.dump();
  bool has_crf_row = false;  // the transition scores count as parameters
  for (const auto& row : s["layers"]) has_crf_row |= row["name"] == "crf";
  EXPECT_TRUE(has_crf_row) << s["layers"].dump();
}

namespace {

// Words that are names when capitalised (May, Bill, Rose: B-PER) and ordinary words when not (may,
// bill, rose: O), among filler at random places: with a lower-cased vocabulary only the spelling
// tells them apart.
std::string made_case_pairs(int sentences, uint32_t seed) {
  const std::vector<std::string> filler = {"the", "met", "in", "said", "a", "visit", "to", "from", "and", "today"};
  const std::vector<std::string> pairs = {"may", "bill", "rose", "mark", "grace", "frank"};
  std::mt19937 rng(seed);
  std::string text;
  for (int s = 0; s < sentences; ++s) {
    const int length = 3 + static_cast<int>(rng() % 6);
    for (int i = 0; i < length; ++i) {
      if (rng() % 3 != 0) {
        text += filler[rng() % filler.size()] + " O\n";
        continue;
      }
      auto word = pairs[rng() % pairs.size()];
      const bool name = rng() % 2 == 0;
      if (name) word[0] = static_cast<char>(word[0] - 'a' + 'A');
      text += word + (name ? " B-PER\n" : " O\n");
    }
    text += "\n";
  }
  return text;
}

// Trains `config` into out_dir and returns its summary.
nlohmann::json trained_summary(Config config, const std::string& out_dir) {
  const auto result = train_quietly(std::move(config), out_dir);
  EXPECT_TRUE(result.finished) << out_dir;
  return result.summary;
}

// Trains `config` with `overrides` applied into out_dir and returns the summary's `figure`.
double trained_figure(Config config, const std::vector<std::string>& overrides, const std::string& out_dir,
                      const std::string& figure) {
  for (const auto& o : overrides) config.apply_override(o);
  return trained_summary(std::move(config), out_dir)[figure].get<double>();
}

}  // namespace

TEST(TaskTraining, CharacterFeaturesKeepTheCaseALowerCasedVocabularyLoses) {
  TempDir dir;
  write_file(dir.file("train.txt"), made_case_pairs(300, 1));
  write_file(dir.file("valid.txt"), made_case_pairs(60, 2));
  write_file(dir.file("test.txt"), made_case_pairs(60, 3));
  auto base = tiny_task_config("tagging", dir.path(), ".txt");
  for (const auto* o : {"data.lowercase=true", "train.batch=16", "train.steps=300"}) base.apply_override(o);
  auto f1_with = [&](const std::string& name, const std::vector<std::string>& overrides) {
    return trained_figure(base, overrides, dir.file(name), "valid_entity_f1");
  };
  // Words alone cannot tell May from may: well below what the spelling gives.
  EXPECT_LT(f1_with("words", {}), 80.0);
  EXPECT_GT(f1_with("cnn", {"model.char_embed=8", "model.char_hidden=8"}), 95.0);
  EXPECT_GT(f1_with("bilstm", {"model.char_embed=8", "model.char_hidden=8", "model.char_encoder=bilstm"}), 95.0);
}

namespace {

// One made-up name per sentence (B-PER) among filler words (O); every name is new, so names seen
// in training are singletons and every validation name is <unk>.
std::string made_new_names(int sentences, uint32_t seed) {
  const std::vector<std::string> filler = {"the", "met", "in", "said", "a", "visit", "to", "from", "and", "today"};
  std::mt19937 rng(seed);
  std::string text;
  for (int s = 0; s < sentences; ++s) {
    const int length = 3 + static_cast<int>(rng() % 6);
    const int name_at = static_cast<int>(rng() % static_cast<uint32_t>(length));
    for (int i = 0; i < length; ++i)
      text += i == name_at ? fmt::format("n{}-{} B-PER\n", seed, s) : filler[rng() % filler.size()] + " O\n";
    text += "\n";
  }
  return text;
}

}  // namespace

// The replacement itself is checked in SingletonUnk.*; here the option's path through a run. (This
// task is solved without it too: every unseen-looking vector is a name here.)
TEST(TaskTraining, SingletonUnkRunsInTrainingAndIsRefusedOutsideTheTasks) {
  TempDir dir;
  write_file(dir.file("train.txt"), made_new_names(300, 1));
  write_file(dir.file("valid.txt"), made_new_names(60, 2));
  write_file(dir.file("test.txt"), made_new_names(60, 3));
  auto config = tiny_task_config("tagging", dir.path(), ".txt");
  for (const auto* o : {"data.min_count=1", "data.singleton_unk=0.5", "train.steps=300"}) config.apply_override(o);
  const auto result = train_quietly(std::move(config), dir.file("run"));
  ASSERT_TRUE(result.finished);
  // Every training name keeps its own vector (min_count = 1) and held-out names, all <unk>, are found.
  EXPECT_EQ(result.summary["data"]["singleton_words"].get<int64_t>(), 300);
  EXPECT_GT(result.summary["valid_entity_f1"].get<double>(), 95.0) << result.summary.dump();

  // QA: a paragraph's words count once, however many questions carry it. "alpha" and "gamma" are
  // once in the text and once in a question, "beta" twice in the text; only "." and "which" are
  // singletons (counted once per question, every context word would have been seen 3 times).
  const nlohmann::json qas = {
      {{"id", "a"}, {"question", "where alpha ?"}, {"answers", {{{"text", "alpha"}, {"answer_start", 0}}}}},
      {{"id", "g"}, {"question", "where gamma ?"}, {"answers", {{{"text", "gamma"}, {"answer_start", 11}}}}},
      {{"id", "b"}, {"question", "which ?"}, {"answers", {{{"text", "beta"}, {"answer_start", 6}}}}}};
  const nlohmann::json squad = {
      {"version", "1.1"},
      {"data", {{{"title", "t"}, {"paragraphs", {{{"context", "alpha beta gamma beta ."}, {"qas", qas}}}}}}}};
  write_file(dir.file("train.json"), squad.dump());
  write_file(dir.file("valid.json"), squad.dump());
  auto qa = tiny_task_config("qa", dir.path(), ".json");
  for (const auto* o : {"data.test=", "data.min_count=1", "data.singleton_unk=0.5", "train.steps=2"}) qa.apply_override(o);
  EXPECT_EQ(trained_summary(qa, dir.file("qa"))["data"]["singleton_words"].get<int64_t>(), 2);

  auto lm = Config::defaults();
  lm.apply_override("data.singleton_unk=0.5");
  EXPECT_TRUE(contains(error_message([&] { lm.validate(); }), "data.singleton_unk applies to tagging and qa only"));
  auto tagging = tiny_task_config("tagging", dir.path(), ".txt");
  tagging.apply_override("data.singleton_unk=2");
  EXPECT_TRUE(contains(error_message([&] { tagging.validate(); }), "data.singleton_unk must be in [0, 1]"));
  tagging.apply_override("data.singleton_unk=0.5");
  tagging.apply_override("data.min_count=2");
  EXPECT_TRUE(contains(error_message([&] { tagging.validate(); }), "data.singleton_unk needs data.min_count = 1"));
}

TEST(TaskTraining, SelectBestReportsTheModelThatValidatedBest) {
  TempDir dir;
  // Short evaluations from an early step, so that the validation figure moves between them.
  const auto result = train_made_tagger(dir, {"train.steps=200", "train.eval_every=20", "train.select=best"});
  ASSERT_TRUE(result.finished);
  const auto& s = result.summary;
  double best = -1, last_valid_f1 = -1;
  int64_t best_step = -1, evaluations = 0;
  std::istringstream lines(moelab::testing::read_file(dir.file("run/metrics.jsonl")));
  for (std::string line; std::getline(lines, line);) {
    const auto record = nlohmann::json::parse(line);
    if (!record.contains("valid_entity_f1")) continue;
    ++evaluations;
    EXPECT_FALSE(record.contains("test_entity_f1")) << "a last-step test figure would not be the selected model's";
    last_valid_f1 = record["valid_entity_f1"].get<double>();
    if (record["valid_entity_f1"].get<double>() > best) {
      best = record["valid_entity_f1"].get<double>();
      best_step = record["step"].get<int64_t>();
    }
  }
  EXPECT_EQ(evaluations, 10);
  EXPECT_EQ(s["selected_step"].get<int64_t>(), best_step);
  EXPECT_EQ(s["steps"].get<int64_t>(), 200);
  // The summary's figures are best.pt's, evaluated again after reloading it.
  EXPECT_NEAR(s["valid_entity_f1"].get<double>(), best, 1e-9) << s.dump();
  EXPECT_TRUE(s.contains("test_entity_f1"));
  const auto record = nlohmann::json::parse(moelab::testing::read_file(dir.file("run/best.json")));
  EXPECT_EQ(record["step"].get<int64_t>(), best_step);

  // `moelab eval` on the run: best.pt gives the summary's figures again, checkpoint.pt the last
  // evaluation's, and --data scores another file as the split.
  auto request = evaluation_of(dir.file("run"));
  auto again = evaluate_task_run(request);
  EXPECT_EQ(again["step"].get<int64_t>(), best_step);
  EXPECT_NEAR(again["valid_entity_f1"].get<double>(), s["valid_entity_f1"].get<double>(), 1e-9);
  EXPECT_NEAR(again["valid_token_acc"].get<double>(), s["valid_token_acc"].get<double>(), 1e-9);
  EXPECT_TRUE(again.contains("moe"));
  request.split = "test";
  EXPECT_NEAR(evaluate_task_run(request)["test_entity_f1"].get<double>(), s["test_entity_f1"].get<double>(), 1e-9);
  request.data_file = dir.file("valid.txt");
  const auto valid_as_test = evaluate_task_run(request);
  EXPECT_NEAR(valid_as_test["test_entity_f1"].get<double>(), best, 1e-9);
  EXPECT_EQ(valid_as_test["test_entities"], s["valid_entities"]);  // the files' gold counts differ
  EXPECT_EQ(valid_as_test["data"]["sentences"].get<int64_t>(), 60);
  request = evaluation_of(dir.file("run"));
  request.checkpoint = "last";
  again = evaluate_task_run(request);
  EXPECT_EQ(again["step"].get<int64_t>(), 200);
  EXPECT_NEAR(again["valid_entity_f1"].get<double>(), last_valid_f1, 1e-9);
  for (const auto& [field, value, message] : std::vector<std::array<std::string, 3>>{
           {"split", "train", "--split must be valid or test"},
           {"checkpoint", "first", "--checkpoint must be best or last"},
           {"data", dir.file("missing.txt"), "missing.txt: no such file"},
           {"directory", dir.file("nothing"), "does not exist"},
           {"setting", "train.eval_batch=4", "--set train.eval_batch: has no effect on a tagging or QA run"}}) {
    auto bad = evaluation_of(dir.file("run"));
    if (field == "split") bad.split = value;
    if (field == "checkpoint") bad.checkpoint = value;
    if (field == "data") bad.data_file = value;
    if (field == "directory") bad.run_directory = value;
    if (field == "setting") bad.eval_settings = {value};
    EXPECT_TRUE(contains(error_message([&] { evaluate_task_run(bad); }), message)) << field;
  }
  // A training file whose tags changed since would permute the output layer's rows.
  write_file(dir.file("train.txt"), made_conll(300, 1) + "zed B-XYZ\n\n");
  const auto changed_tags = error_message([&] { evaluate_task_run(evaluation_of(dir.file("run"))); });
  EXPECT_TRUE(contains(changed_tags, "not the [\"B-LOC\"")) << changed_tags;

  auto lm = Config::defaults();
  lm.apply_override("train.select=best");
  EXPECT_TRUE(contains(error_message([&] { lm.validate(); }), "train.select = best needs a task with a validation figure"));
  auto tagging = tiny_task_config("tagging", dir.path(), ".txt");
  tagging.apply_override("train.select=best");
  tagging.apply_override("train.eval_every=0");
  EXPECT_TRUE(contains(error_message([&] { tagging.validate(); }), "train.select = best needs train.eval_every > 0"));
}

TEST(TaskTraining, SoftMoETaggerLearnsAMadePattern) {
  TempDir dir;
  const auto result =
      train_made_tagger(dir, {"moe.router=soft", "moe.soft_slots=2", "moe.balance.importance=0", "train.steps=300"});
  ASSERT_TRUE(result.finished);
  const auto& s = result.summary;
  EXPECT_GT(s["valid_entity_f1"].get<double>(), 85.0) << s.dump();
  // Every expert fills its slots in every sentence: the load is exactly even.
  const auto& layer = s["moe_layers"][0];
  ASSERT_EQ(layer["expert_load"].size(), 4u);
  for (const auto& load : layer["expert_load"]) EXPECT_NEAR(load.get<double>(), 0.25, 1e-12);
  EXPECT_EQ(layer["dropped_frac"].get<double>(), 0.0);
}

TEST(TaskTraining, QaLearnsMadeQuestionsAndResumesExactly) {
  TempDir dir;
  for (const auto& [name, seed] : std::vector<std::pair<std::string, uint32_t>>{{"train", 1}, {"valid", 2}, {"test", 3}}) {
    write_file(dir.file(name + ".conll"), made_conll(name == "train" ? 400 : 60, seed));
    write_file(dir.file(name + ".json"), squad_from_conll(read_conll_file(dir.file(name + ".conll")), 2, nullptr).dump());
  }
  TrainRequest request;
  request.config = tiny_task_config("qa", dir.path(), ".json");
  request.config.set("train.steps", int64_t{300});
  request.out_dir = dir.file("full");
  request.quiet = true;
  const auto full = train_model(request);
  ASSERT_TRUE(full.finished);
  // Questions name the entity type; a chance-level span picker scores far below this.
  EXPECT_GT(full.summary["valid_f1"].get<double>(), 55.0) << full.summary.dump();
  EXPECT_GT(full.summary["valid_em"].get<double>(), 50.0);
  EXPECT_TRUE(full.summary.contains("test_em"));
  // `moelab eval` of the last checkpoint (train.select = last) repeats the summary's test figures.
  auto evaluation = evaluation_of(dir.file("full"));
  evaluation.split = "test";
  evaluation.checkpoint = "last";
  const auto again = evaluate_task_run(evaluation);
  EXPECT_NEAR(again["test_f1"].get<double>(), full.summary["test_f1"].get<double>(), 1e-9);
  EXPECT_NEAR(again["test_em"].get<double>(), full.summary["test_em"].get<double>(), 1e-9);

  // Killed after step 100 (a checkpoint step), resumed: the same batches and the same model.
  request.out_dir = dir.file("resumed");
  request.stop_after_step = 100;
  EXPECT_FALSE(train_model(request).finished);
  request.stop_after_step = 0;
  request.resume = true;
  const auto resumed = train_model(request);
  ASSERT_TRUE(resumed.finished);
  EXPECT_NEAR(resumed.summary["valid_f1"].get<double>(), full.summary["valid_f1"].get<double>(), 1e-9);
  EXPECT_NEAR(resumed.summary["valid_loss"].get<double>(), full.summary["valid_loss"].get<double>(), 1e-6);
}

TEST(TaskTraining, QaWithAttentionFlowAndCharactersLearnsMadeQuestions) {
  TempDir dir;
  for (const auto& [name, seed] : std::vector<std::pair<std::string, uint32_t>>{{"train", 1}, {"valid", 2}}) {
    write_file(dir.file(name + ".conll"), made_conll(name == "train" ? 400 : 60, seed));
    write_file(dir.file(name + ".json"), squad_from_conll(read_conll_file(dir.file(name + ".conll")), 2, nullptr).dump());
  }
  auto config = tiny_task_config("qa", dir.path(), ".json");
  for (const auto* o : {"data.test=", "train.steps=300", "model.qa_attention=bidaf", "model.char_embed=8", "model.char_hidden=8"})
    config.apply_override(o);
  const auto result = train_quietly(std::move(config), dir.file("run"));
  ASSERT_TRUE(result.finished);
  EXPECT_GT(result.summary["valid_f1"].get<double>(), 55.0) << result.summary.dump();
  // The cost table has the layers after the encoder.
  const auto layers = result.summary["layers"].dump();
  EXPECT_NE(layers.find("context_question_attention"), std::string::npos) << layers;
  EXPECT_NE(layers.find("char_features"), std::string::npos) << layers;
}

TEST(TaskTraining, QaWordOverlapFindsWhatEmbeddingsCannot) {
  TempDir dir;
  write_file(dir.file("train.json"), made_follow_questions(400, 1));
  write_file(dir.file("valid.json"), made_follow_questions(60, 2));
  auto base = tiny_task_config("qa", dir.path(), ".json");
  for (const auto* o : {"data.test=", "train.steps=300", "moe.experts=0"}) base.apply_override(o);
  auto f1_with = [&](const std::string& name, const std::vector<std::string>& overrides) {
    return trained_figure(base, overrides, dir.file(name), "valid_f1");
  };
  // Without the overlap the asked word is <unk> like every other: about one answer in nine.
  EXPECT_LT(f1_with("words", {}), 40.0);
  EXPECT_GT(f1_with("overlap", {"model.qa_word_overlap=true"}), 90.0);
  EXPECT_GT(f1_with("overlap_bidaf", {"model.qa_word_overlap=true", "model.qa_attention=bidaf"}), 90.0);

  auto tagging = tiny_task_config("tagging", dir.path(), ".txt");
  tagging.apply_override("model.qa_word_overlap=true");
  EXPECT_TRUE(contains(error_message([&] { tagging.validate(); }), "model.qa_word_overlap applies to qa only"));
}

TEST(TaskTraining, BadTaskInputFailsClearly) {
  TempDir dir;
  auto config = Config::defaults();
  config.set("model.task", std::string("tagging"));
  EXPECT_TRUE(contains(error_message([&] { config.validate(); }), "needs data.train and data.valid"));
  write_file(dir.file("train.txt"), made_conll(20, 1));
  write_file(dir.file("valid.txt"), "EU B-ORG\nrejects\n");
  TrainRequest request;
  request.config = tiny_task_config("tagging", dir.path(), ".txt");
  request.config.set("data.test", std::string(""));
  request.out_dir = dir.file("run");
  request.quiet = true;
  EXPECT_TRUE(contains(error_message([&] { train_model(request); }), "valid.txt:2:"));
  write_file(dir.file("valid.txt"), made_conll(5, 2));
  write_file(dir.file("glove.txt"), "alice 1 2 3\nbob 1 2\n");
  request.config.set("data.embeddings", dir.file("glove.txt"));
  request.config.set("model.embed", int64_t{3});
  EXPECT_TRUE(contains(error_message([&] { train_model(request); }), "dimension mismatch between lines"));
}

TEST(ExpertDropout, ActsOnExpertHiddenUnitsInTrainingOnly) {
  // The gating study's experts drop half their hidden units while training. Same weights: in eval
  // the layer equals one without dropout; in training it differs, with a new mask every call.
  torch::manual_seed(5);
  MoELayerOptions options(12, 4, 2, 32);
  options.router("topk_mask").balance(BalanceWeights{0, 0, 0, 0});
  MoELayer plain(options);
  MoELayer dropped(MoELayerOptions(options).expert_dropout(0.5));
  {
    torch::NoGradGuard no_grad;
    auto target = dropped->named_parameters();
    for (const auto& p : plain->named_parameters()) target[p.key()].copy_(p.value());
  }
  const auto x = torch::randn({64, 12});
  plain->eval();
  dropped->eval();
  EXPECT_TRUE(torch::allclose(plain(x).output, dropped(x).output));
  dropped->train();
  const auto once = dropped(x).output;
  EXPECT_FALSE(torch::allclose(once, plain(x).output, 1e-3, 1e-3));
  EXPECT_FALSE(torch::allclose(once, dropped(x).output, 1e-3, 1e-3));  // a new mask every call

  DenseFfn dense(DenseFfnOptions(12, 32).hidden_dropout(0.5));
  dense->eval();
  const auto reference = dense(x);
  dense->train();
  EXPECT_FALSE(torch::allclose(dense(x), reference, 1e-3, 1e-3));

  EXPECT_TRUE(contains(error_message([&] { MoELayer(MoELayerOptions(options).bank("low_rank").expert_dropout(0.5)); }),
                       "ffn bank only"));
  auto config = Config::defaults();
  config.apply_override("moe.expert_dropout=1.0");
  EXPECT_TRUE(contains(error_message([&] { config.validate(); }), "moe.expert_dropout must be in [0, 1)"));
}
