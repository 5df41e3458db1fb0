// `moelab eval --run RUN_DIR [--split valid|test] [--data DIR|FILE]`: perplexity of a trained language
// model; a tagging or QA run's figures (entity F1, EM / F1) from its best or last checkpoint.
#include <fmt/format.h>

#include <filesystem>

#include "commands.h"
#include "moelab/config/config.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/run_dir.h"
#include "moelab/train/task_run_evaluation.h"
#include "moelab/util/error.h"

namespace moelab::cli {

namespace {
// The task a run directory holds: from its config.toml, else from a checkpoint's own config (a
// directory holding only copied checkpoints); "lm" when neither is there, so that the
// language-model path reports what is missing.
std::string run_task(const std::string& directory) {
  const RunPaths paths(directory);
  if (std::filesystem::is_regular_file(paths.config))
    return Config::from_toml_file(paths.config).get_string("model.task");
  for (const auto& path : {paths.checkpoint, paths.best_checkpoint})
    if (std::filesystem::is_regular_file(path))
      return Config::from_toml_string(read_checkpoint_meta(path).config_toml, path + " (config)").get_string("model.task");
  return "lm";
}

void print_task_evaluation(const nlohmann::json& result, bool json) {
  if (json) {
    fmt::print("{}\n", result.dump());
    return;
  }
  fmt::print("{} {} run, {} at step {}:\n", result["split"].get<std::string>(), result["task"].get<std::string>(),
             result["checkpoint"].get<std::string>(), result["step"].get<int64_t>());
  const std::string prefix = result["split"].get<std::string>() + "_";
  for (const auto& [key, value] : result.items()) {
    if (key.rfind(prefix, 0) != 0 || !value.is_number()) continue;
    if (value.is_number_integer())
      fmt::print("  {} {}\n", key, value.get<int64_t>());
    else
      fmt::print("  {} {:.4f}\n", key, value.get<double>());
  }
}

struct EvalArgs {
  std::string run_dir;
  std::string split = "valid";
  std::string data_dir;
  std::string checkpoint;
  int64_t max_tokens = 0;
  std::string device = "cpu";
  bool json = false;
  std::vector<std::string> settings;
};
}  // namespace

void add_eval_command(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval", "A trained run on a split: perplexity (language models), token accuracy "
                                          "and entity F1 (tagging), EM and F1 (QA)");
  cmd->add_option("--run", args->run_dir, "Run directory")->required();
  cmd->add_option("--split", args->split, "valid or test")->check(CLI::IsMember({"valid", "test"}))->capture_default_str();
  cmd->add_option("--data", args->data_dir,
                  "Language models: corpus directory (default: the run's data.corpus); tagging and QA: the file "
                  "that replaces the run's data.<split>");
  cmd->add_option("--checkpoint", args->checkpoint,
                  "Tagging and QA runs: best (best.pt, the best validation figure; default) or last");
  cmd->add_option("--max-tokens", args->max_tokens, "Evaluate on at most this many tokens (0 = all)");
  cmd->add_option("--device", args->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_flag("--json", args->json, "Print a JSON object");
  cmd->add_option("--set", args->settings,
                  "KEY=VALUE for an evaluation-only setting (moe.eval_capacity_factor, moe.capacity_drop; language "
                  "models also debug.window_routing_in_eval, train.eval_batch); repeatable");
  cmd->callback([args] {
    if (run_task(args->run_dir) != "lm") {
      if (args->max_tokens != 0) fail("--max-tokens applies to language-model runs");
      TaskRunEvaluationRequest request{args->run_dir, args->split,  args->checkpoint.empty() ? "best" : args->checkpoint,
                                       args->data_dir, args->device, args->settings};
      print_task_evaluation(evaluate_task_run(request), args->json);
      return;
    }
    if (!args->checkpoint.empty())
      fail("--checkpoint applies to tagging and QA runs; a language model is evaluated from its checkpoint.pt");
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
