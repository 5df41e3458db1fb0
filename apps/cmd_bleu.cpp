// `moelab bleu --ref FILE [--hyp FILE]`: corpus BLEU and chrF2 of a translation, as sacreBLEU 2.6.0
// prints them with its defaults (`sacrebleu REF -i HYP -m bleu chrf`). Hypotheses come from standard
// input when --hyp is absent. Line i of the hypotheses is scored against line i of the references.
#include <fmt/format.h>

#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "moelab/train/bleu.h"
#include "moelab/train/chrf.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab::cli {

namespace {

// sacreBLEU splits files on "\n" only but standard input on any line ending (see LineEndings);
// doing the same keeps the line counts, and so the scores, equal to its.
std::vector<std::string> read_segments_from_file(const std::string& path) {
  return split_segments(read_text_file(path), LineEndings::kNewlineOnly);
}

std::vector<std::string> read_segments_from_stdin() {
  const std::string text{std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
  if (std::cin.bad()) fail("cannot read the hypotheses from standard input");
  return split_segments(text, LineEndings::kUniversal);
}

}  // namespace

void add_bleu_command(CLI::App& app) {
  auto* bleu = app.add_subcommand(
      "bleu", "Corpus BLEU and chrF2 of a translation, as sacreBLEU 2.6.0 computes them with its defaults");
  auto ref_path = std::make_shared<std::string>();
  auto hyp_path = std::make_shared<std::string>();
  auto width = std::make_shared<int>(2);
  bleu->add_option("--ref", *ref_path, "Reference file, one segment per line")->required();
  bleu->add_option("--hyp", *hyp_path, "Hypothesis file, one segment per line (default: standard input)");
  bleu->add_option("--width", *width, "Decimals of the two scores (sacreBLEU's Python API prints 2, its CLI 1)")
      ->capture_default_str()
      ->check(CLI::Range(0, 10));
  bleu->callback([ref_path, hyp_path, width] {
    const std::string hyp_name = hyp_path->empty() ? "standard input" : *hyp_path;
    const auto references = read_segments_from_file(*ref_path);
    const auto hypotheses = hyp_path->empty() ? read_segments_from_stdin() : read_segments_from_file(*hyp_path);
    if (hypotheses.size() != references.size())
      fail("{} has {} lines but {} has {}: each hypothesis line needs exactly one reference line", hyp_name,
           hypotheses.size(), *ref_path, references.size());
    if (hypotheses.empty()) fail("{} and {} have no lines to score", hyp_name, *ref_path);

    fmt::print("{}\n", format_bleu_line(corpus_bleu(hypotheses, references), *width));
    fmt::print("{}\n", format_chrf_line(corpus_chrf(hypotheses, references), *width));
    fmt::print("BLEU signature: {}\n", bleu_signature());
    fmt::print("chrF2 signature: {}\n", chrf_signature());
  });
}

}  // namespace moelab::cli
