// `moelab eval --run RUN_DIR [--split valid|test] [--data DIR]`: perplexity of a trained run.
#include <fmt/format.h>

#include "commands.h"
#include "moelab/train/run_dir.h"

namespace moelab::cli {

namespace {
struct EvalArgs {
  std::string run_dir;
  std::string split = "valid";
  std::string data_dir;
  int64_t max_tokens = 0;
  std::string device = "cpu";
  bool json = false;
  std::vector<std::string> settings;
};
}  // namespace

void add_eval_command(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval", "Perplexity of a trained run on a split");
  cmd->add_option("--run", args->run_dir, "Run directory")->required();
  cmd->add_option("--split", args->split, "valid or test")->check(CLI::IsMember({"valid", "test"}))->capture_default_str();
  cmd->add_option("--data", args->data_dir, "Corpus directory (default: the run's data.corpus)");
  cmd->add_option("--max-tokens", args->max_tokens, "Evaluate on at most this many tokens (0 = all)");
  cmd->add_option("--device", args->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_flag("--json", args->json, "Print a JSON object");
  cmd->add_option("--set", args->settings,
                  "KEY=VALUE for an evaluation-only setting (moe.eval_capacity_factor, moe.capacity_drop, "
                  "debug.window_routing_in_eval, train.eval_batch); repeatable");
  cmd->callback([args] {
    auto run = load_run(args->run_dir, args->device, args->settings);
    std::vector<RoutingStatsAccumulator> routing;  // one per MoE layer
    const auto result = evaluate_run_split(run, args->split, args->data_dir, args->max_tokens, &routing);
    if (args->json) {
      nlohmann::json out = {{"split", args->split}, {"ppl", result.perplexity}, {"loss", result.loss},
                            {"tokens", result.tokens}, {"step", run.step}};
      if (!routing.empty()) {
        out["moe"] = routing.front().to_json();
        out["moe_layers"] = nlohmann::json::array();
        for (const auto& layer : routing) out["moe_layers"].push_back(layer.to_json());
      }
      fmt::print("{}\n", out.dump());
    } else {
      fmt::print("{} perplexity {:.3f} ({} tokens, step {})\n", args->split, result.perplexity, result.tokens,
                 run.step);
    }
  });
}

}  // namespace moelab::cli
