// `moelab data kjv --out DIR`: export the embedded corpus.
#include <fmt/format.h>

#include "commands.h"
#include "moelab/data/kjv_export.h"
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
}

}  // namespace moelab::cli
