// `moelab data kjv --out DIR`: export the embedded corpus.
// `moelab data stats DIR`: token counts of a corpus directory.
// `moelab data conll-qa --conll FILE --out FILE.json`: a SQuAD-format QA set made from CoNLL NER data.
// `moelab data squad-split --input dev-v1.1.json --train-articles N [--valid-articles M] --seed S --out DIR`:
// SQuAD split by whole articles.
// `moelab data spm --input FILE... --vocab N --type bpe|unigram --out MODEL`: a SentencePiece subword
// model for translation, joint over several inputs (both languages) or per language with one.
#include <fmt/format.h>

#include <filesystem>

#include "commands.h"
#include "moelab/data/conll.h"
#include "moelab/data/conll_to_squad.h"
#include "moelab/data/kjv_export.h"
#include "moelab/data/squad_split.h"
#include "moelab/data/subword_model.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"
#include "moelab/data/text_corpus.h"

namespace moelab::cli {

void add_data_command(CLI::App& app) {
  auto* data = app.add_subcommand("data", "Prepare corpora");
  data->require_subcommand(1);
  auto* kjv = data->add_subcommand("kjv", "Export the King James Bible (Debian's bible-kjv) as train/valid/test.txt");
  auto out = std::make_shared<std::string>("data/kjv");
  kjv->add_option("--out", *out, "Output directory")->capture_default_str();
  kjv->callback([out] {
    const auto stats = export_kjv(*out);
    const char* names[] = {"train", "valid", "test"};
    for (int i = 0; i < 3; ++i)
      fmt::print("{}/{}.txt: {} verses, {} words\n", *out, names[i], stats.verses[i], stats.words[i]);
  });

  auto* stats = data->add_subcommand("stats", "Token counts and vocabulary of a corpus directory (train/valid/test.txt)");
  auto dir = std::make_shared<std::string>();
  auto min_count = std::make_shared<int64_t>(1);
  auto max_vocab = std::make_shared<int64_t>(0);
  stats->add_option("dir", *dir, "Corpus directory")->required();
  stats->add_option("--min-count", *min_count, "As data.min_count")->capture_default_str();
  stats->add_option("--max-vocab", *max_vocab, "As data.max_vocab (0 = all)")->capture_default_str();
  stats->callback([dir, min_count, max_vocab] {
    const auto corpus = load_text_corpus(*dir, VocabularyOptions{*min_count, *max_vocab});
    fmt::print("{}: vocabulary {}; tokens (one <eos> per line): train {}, valid {}, test {}\n", *dir,
               corpus.vocabulary.size(), corpus.train.size(0), corpus.valid.size(0), corpus.test.size(0));
  });

  auto* conll_qa = data->add_subcommand(
      "conll-qa", "Make a SQuAD v1.1-format QA file from CoNLL NER data (\"Which person is mentioned?\")");
  auto conll_file = std::make_shared<std::string>();
  auto qa_out = std::make_shared<std::string>();
  auto per_context = std::make_shared<int64_t>(3);
  conll_qa->add_option("--conll", *conll_file, "CoNLL file to read")->required();
  conll_qa->add_option("--out", *qa_out, "SQuAD-format JSON file to write")->required();
  conll_qa->add_option("--sentences", *per_context, "Sentences per context")->capture_default_str();
  conll_qa->callback([conll_file, qa_out, per_context] {
    ConllQaStats stats;
    const auto json = squad_from_conll(read_conll_file(*conll_file), *per_context, &stats);
    const auto parent = std::filesystem::path(*qa_out).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    write_file_atomically(*qa_out, json.dump() + "\n");
    fmt::print("{}: {} contexts, {} questions\n", *qa_out, stats.contexts, stats.questions);
  });

  auto* squad_split = data->add_subcommand(
      "squad-split", "Split a SQuAD v1.1 file by whole articles into DIR/train.json, DIR/valid.json (with "
                     "--valid-articles) and DIR/test.json");
  struct SquadSplitArgs {
    std::string input, out;
    int64_t train_articles = 0, valid_articles = 0;
    uint64_t seed = 1;
  };
  auto split_args = std::make_shared<SquadSplitArgs>();
  squad_split->add_option("--input", split_args->input, "SQuAD v1.1 JSON file (e.g. dev-v1.1.json)")->required();
  squad_split->add_option("--train-articles", split_args->train_articles, "Articles for training")->required();
  squad_split->add_option("--valid-articles", split_args->valid_articles, "Articles for validation (0 = none)")
      ->capture_default_str();
  squad_split->add_option("--seed", split_args->seed, "Seed of the article shuffle")->capture_default_str();
  squad_split->add_option("--out", split_args->out, "Output directory")->required();
  squad_split->callback([split_args] {
    nlohmann::json document;
    try {
      document = nlohmann::json::parse(read_text_file(split_args->input));
    } catch (const nlohmann::json::exception& error) {
      fail("{}: not valid JSON ({})", split_args->input, error.what());
    }
    const auto split = split_squad_by_article(document, split_args->train_articles, split_args->valid_articles,
                                              split_args->seed, split_args->input);
    std::filesystem::create_directories(split_args->out);
    const char* names[] = {"train", "valid", "test"};
    const nlohmann::json* parts[] = {&split.train, &split.valid, &split.test};
    for (int s = 0; s < 3; ++s) {
      if (parts[s]->is_null()) continue;
      const auto path = split_args->out + "/" + names[s] + ".json";
      write_file_atomically(path, parts[s]->dump() + "\n");
      fmt::print("{}: {} articles, {} paragraphs, {} questions\n", path, split.articles[s], split.paragraphs[s],
                 split.questions[s]);
    }
    fmt::print("split of {} by article, seed {}: not the official SQuAD training set\n", split_args->input,
               split_args->seed);
  });

  auto* spm = data->add_subcommand(
      "spm", "Train a SentencePiece subword model (ids: <pad> 0, <unk> 1, <s> 2, </s> 3); several inputs "
             "train one joint model, e.g. train.de and train.en");
  auto spm_options = std::make_shared<SubwordTrainOptions>();
  spm->add_option("--input", spm_options->inputs, "Text files, one sentence per line")->required();
  spm->add_option("--vocab", spm_options->vocab_size, "Pieces in the model, special ones included")
      ->capture_default_str();
  spm->add_option("--type", spm_options->type, "bpe or unigram")->capture_default_str();
  spm->add_option("--out", spm_options->output, "The .model file to write (a .vocab listing goes beside it)")
      ->required();
  spm->add_option("--character-coverage", spm_options->character_coverage,
                  "Fraction of characters kept as pieces (0.98 to 1)")
      ->capture_default_str();
  spm->add_option("--max-sentences", spm_options->max_sentences,
                  "Train on this many sentences sampled from the inputs (0 = all)")
      ->capture_default_str();
  spm->callback([spm_options] {
    train_subword_model(*spm_options);
    const auto model = SubwordModel::load(spm_options->output);
    std::string inputs;
    for (const auto& input : spm_options->inputs) inputs += (inputs.empty() ? "" : ", ") + input;
    fmt::print("{}: {} model, vocabulary {}, trained on {}\n", model.name(), spm_options->type, model.size(),
               inputs);
  });
}

}  // namespace moelab::cli
