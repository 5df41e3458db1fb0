// `moelab data kjv --out DIR`: export the embedded corpus.
// `moelab data stats DIR`: token counts of a corpus directory.
// `moelab data conll-qa --conll FILE --out FILE.json`: a SQuAD-format QA set made from CoNLL NER data.
#include <fmt/format.h>

#include <filesystem>

#include "commands.h"
#include "moelab/data/conll.h"
#include "moelab/data/conll_to_squad.h"
#include "moelab/data/kjv_export.h"
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
}

}  // namespace moelab::cli
