// `moelab translate --run DIR [--beam N] [--alpha A] [--input FILE] [--output FILE]`: translations of
// plain-text sentences, one per line (standard input and output by default), by a trained run.
#include <fmt/format.h>

#include <fstream>
#include <iostream>

#include "commands.h"
#include "moelab/train/translation_run.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab::cli {

namespace {

struct TranslateArgs {
  std::string run_dir;
  std::string input, output;
  std::string checkpoint = "best";
  std::string device = "cpu";
  // beam, alpha and max_ratio: each used only when given, the run's decode.* otherwise.
  SearchOptions search;
};

std::vector<std::string> read_sentences(std::istream& in, const std::string& name) {
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos)
      fail("{}:{}: empty line (translate reads one sentence per line)", name, lines.size() + 1);
    lines.push_back(line);
  }
  return lines;
}

}  // namespace

void add_translate_command(CLI::App& app) {
  auto args = std::make_shared<TranslateArgs>();
  auto* cmd = app.add_subcommand("translate", "Translate sentences (one per line) with a trained translation run");
  cmd->add_option("--run", args->run_dir, "Run directory")->required();
  cmd->add_option("--input", args->input, "Source sentences, one per line (default: standard input)");
  cmd->add_option("--output", args->output, "Where to write the translations (default: standard output)");
  cmd->add_option("--beam", args->search.beam, "Beam size (1 = greedy; default: the run's decode.beam)");
  cmd->add_option("--alpha", args->search.alpha, "GNMT length penalty exponent (default: the run's decode.alpha)");
  cmd->add_option("--max-ratio", args->search.max_ratio,
                  "At most this many times the source length + 10 output tokens (default: the run's decode.max_ratio)");
  cmd->add_option("--checkpoint", args->checkpoint, "best (best validation BLEU) or last")->capture_default_str();
  cmd->add_option("--device", args->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->callback([args, cmd] {
    // Checked before anything is read, each naming its flag (CLI11's ranges would print the
    // largest double); the defaults pass.
    if (args->search.beam < 1) fail("--beam must be >= 1, got {}", args->search.beam);
    if (!(args->search.alpha >= 0)) fail("--alpha must be >= 0, got {}", args->search.alpha);
    if (!(args->search.max_ratio > 0)) fail("--max-ratio must be > 0, got {}", args->search.max_ratio);
    std::vector<std::string> sentences;
    if (args->input.empty()) {
      sentences = read_sentences(std::cin, "<stdin>");
    } else {
      std::ifstream in(args->input);
      if (!in) fail("cannot read {}", args->input);
      sentences = read_sentences(in, args->input);
    }
    auto run = load_translation_run(args->run_dir, args->device, args->checkpoint);
    auto options = search_options(run.config);
    if (cmd->count("--beam") > 0) options.beam = args->search.beam;
    if (cmd->count("--alpha") > 0) options.alpha = args->search.alpha;
    if (cmd->count("--max-ratio") > 0) options.max_ratio = args->search.max_ratio;
    const auto translations = translate_text(run, sentences, options);
    std::string text;
    for (const auto& line : translations) text += line + "\n";
    if (args->output.empty())
      fmt::print("{}", text);
    else
      write_file_atomically(args->output, text);
  });
}

}  // namespace moelab::cli
