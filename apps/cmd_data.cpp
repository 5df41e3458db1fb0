// `moelab data kjv --out DIR`: export the embedded corpus.
#include <fmt/format.h>

#include "commands.h"
#include "moelab/data/kjv_export.h"

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
}

}  // namespace moelab::cli
