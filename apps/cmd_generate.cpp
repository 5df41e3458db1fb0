// `moelab generate --run RUN_DIR --prompt "..." --tokens N [--temperature T] [--top-k K]`
#include <fmt/format.h>

#include "commands.h"
#include "moelab/data/text_corpus.h"
#include "moelab/models/incremental_decoder.h"
#include "moelab/train/run_dir.h"
#include "moelab/util/error.h"

namespace moelab::cli {

namespace {
struct GenerateArgs {
  std::string run_dir;
  std::string prompt;
  int64_t tokens = 50;
  double temperature = 1.0;
  int64_t top_k = 0;
  int64_t seed = 1;
  std::string device = "cpu";
};
}  // namespace

void add_generate_command(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand("generate", "Sample text from a trained language model");
  cmd->add_option("--run", args->run_dir, "Run directory")->required();
  cmd->add_option("--prompt", args->prompt, "Text to continue (whitespace-separated words)");
  cmd->add_option("--tokens", args->tokens, "Words to generate")->capture_default_str();
  cmd->add_option("--temperature", args->temperature, "Softmax temperature")->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "Sample among the K most likely words (0 = all)")->capture_default_str();
  cmd->add_option("--seed", args->seed, "Random seed")->capture_default_str();
  cmd->add_option("--device", args->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->callback([args] {
    if (args->tokens < 0) fail("--tokens must be >= 0, got {}", args->tokens);
    if (!(args->temperature > 0)) fail("--temperature must be > 0, got {}", args->temperature);
    if (args->top_k < 0) fail("--top-k must be >= 0, got {}", args->top_k);
    auto run = load_run(args->run_dir, args->device);
    const auto& vocab = run.vocabulary;
    torch::manual_seed(static_cast<uint64_t>(args->seed));
    torch::NoGradGuard no_grad;

    // The prompt starts after an end of line, as every training line does.
    std::vector<int64_t> context = {vocab.eos_id()};
    for (const auto& word : split_whitespace(args->prompt)) context.push_back(vocab.id(word));
    std::string text = args->prompt;
    IncrementalDecoder decoder(run.model);
    std::vector<int64_t> input = context;
    for (int64_t i = 0; i < args->tokens; ++i) {
      auto log_probs = decoder.feed(input) / args->temperature;  // [V]
      if (args->top_k > 0 && args->top_k < log_probs.size(0)) {
        auto [values, indices] = log_probs.topk(args->top_k);
        log_probs = torch::full_like(log_probs, -std::numeric_limits<float>::infinity()).scatter(0, indices, values);
      }
      const int64_t next = torch::multinomial(torch::softmax(log_probs, 0), 1).item<int64_t>();
      const auto& word = vocab.token(next);
      text += (next == vocab.eos_id()) ? "\n" : ((text.empty() || text.back() == '\n') ? "" : " ") + word;
      input = {next};
    }
    fmt::print("{}\n", text);
  });
}

}  // namespace moelab::cli
