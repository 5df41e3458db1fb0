// `moelab train --config FILE [--set section.key=value ...] --out RUN_DIR [--resume] [--force]`
#include <fmt/format.h>

#include <algorithm>

#include "commands.h"
#include "moelab/config/config.h"
#include "moelab/comm/launch_environment.h"
#include "moelab/train/run_dir.h"
#include "moelab/train/trainer.h"
#include "moelab/util/files.h"
#include "moelab/util/stop_signal.h"

namespace moelab::cli {

namespace {

struct TrainArgs {
  std::string config_file;
  std::vector<std::string> overrides;
  std::string out_dir;
  bool resume = false;
  bool force = false;
  bool quiet = false;
  bool list_keys = false;
};

void print_schema() {
  for (const auto& key : Config::schema())
    fmt::print("{:<28} {:<16} {}\n", key.name, config_type_name(key.default_value), key.doc);
}

void print_task_figures(const nlohmann::json& s, const std::string& out_dir) {
  const auto task = s.value("task", std::string("lm"));
  if (task == "tagging") {
    fmt::print("run {}: valid token acc {:.2f}%, entity P/R/F1 {:.2f}/{:.2f}/{:.2f}", out_dir,
               s["valid_token_acc"].get<double>(), s["valid_entity_precision"].get<double>(),
               s["valid_entity_recall"].get<double>(), s["valid_entity_f1"].get<double>());
    if (s.contains("test_entity_f1"))
      fmt::print("; test token acc {:.2f}%, entity F1 {:.2f}", s["test_token_acc"].get<double>(),
                 s["test_entity_f1"].get<double>());
    fmt::print("\n");
    std::string types;
    for (const auto& [type, figures] : s["valid_entity_by_type"].items())
      types += fmt::format(" {} {:.2f}", type, figures["f1"].get<double>());
    if (!types.empty()) fmt::print("valid entity F1 by type:{}\n", types);
  } else if (task == "qa") {
    fmt::print("run {}: valid EM {:.2f}, F1 {:.2f}, start acc {:.2f}%, end acc {:.2f}% ({} questions)", out_dir,
               s["valid_em"].get<double>(), s["valid_f1"].get<double>(), s["valid_start_acc"].get<double>(),
               s["valid_end_acc"].get<double>(), s["valid_questions"].get<int64_t>());
    if (s.contains("test_em")) fmt::print("; test EM {:.2f}, F1 {:.2f}", s["test_em"].get<double>(), s["test_f1"].get<double>());
    fmt::print("\n");
  } else if (task == "translation") {
    fmt::print("run {}: valid BLEU {:.2f} (greedy), loss {:.3f}", out_dir, s["valid_bleu"].get<double>(),
               s["valid_loss"].get<double>());
    if (s.contains("test_bleu"))
      fmt::print("; test BLEU {:.2f}, chrF2 {:.2f} (beam {})", s["test_bleu"].get<double>(), s["test_chrf"].get<double>(),
                 s["decode"]["beam"].get<int64_t>());
    fmt::print("\n");
    if (s.contains("test_bleu_line")) fmt::print("test {}\nsacreBLEU signature {}\n", s["test_bleu_line"].get<std::string>(),
                                                 s["bleu_signature"].get<std::string>());
  } else {
    fmt::print("run {}: valid ppl {:.2f}, test ppl {:.2f}\n", out_dir, s["valid_ppl"].get<double>(),
               s["test_ppl"].get<double>());
  }
}

void print_summary(const nlohmann::json& s, const std::string& out_dir) {
  print_task_figures(s, out_dir);
  fmt::print("parameters: {} total, {} active per token; {} FLOPs per token\n", s["params_total"].get<int64_t>(),
             s["params_active_per_token"].get<int64_t>(), s["flops_per_token"].get<int64_t>());
  fmt::print("training: {:.0f} tokens/s, {:.1f} s, peak RSS {:.0f} MiB\n", s["tokens_per_s"].get<double>(),
             s["train_seconds"].get<double>(), s["peak_rss_mb"].get<double>());
  for (const auto& layer : s["moe_layers"]) {
    const auto load = layer["expert_load"].get<std::vector<double>>();
    if (load.size() <= 64) {
      std::string loads;
      for (const double v : load) loads += fmt::format(" {:.1f}", 100 * v);
      fmt::print("expert load (% of token-slots, valid):{}\n", loads);
    } else {  // thousands of numbers help no one on a terminal; summary.json has them all
      const auto used = std::count_if(load.begin(), load.end(), [](double v) { return v > 0; });
      fmt::print("expert load (valid): {} of {} experts received tokens, largest {:.2f}% of token-slots "
                 "(every expert's share is in summary.json)\n",
                 used, load.size(), 100 * *std::max_element(load.begin(), load.end()));
    }
    fmt::print("load CV {:.3f}, importance CV {:.3f}, max/mean load {:.2f}, dropped {:.2f}%\n",
               layer["load_cv"].get<double>(), layer["importance_cv"].get<double>(),
               layer["max_mean_load"].get<double>(), 100 * layer["dropped_frac"].get<double>());
  }
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train a model; writes config.toml, metrics.jsonl, summary.json, checkpoints");
  cmd->add_option("--config", args->config_file, "TOML config (defaults apply to absent keys)");
  cmd->add_option("--set", args->overrides, "Override a key: section.key=value (repeatable)");
  cmd->add_option("--out", args->out_dir, "Run directory");
  cmd->add_flag("--resume", args->resume, "Continue the run in --out from its last checkpoint");
  cmd->add_flag("--force", args->force, "Replace a different run already in --out");
  cmd->add_flag("--quiet", args->quiet, "No progress output");
  cmd->add_flag("--list-keys", args->list_keys, "List every config key with its type and meaning, then exit");
  cmd->callback([args] {
    if (args->list_keys) return print_schema();
    if (args->out_dir.empty()) throw CLI::RequiredError("--out");
    TrainRequest request;
    if (!args->config_file.empty()) {
      request.config = Config::from_toml_file(args->config_file);
    } else if (args->resume && file_exists(RunPaths(args->out_dir).config)) {
      request.config = Config::from_toml_file(RunPaths(args->out_dir).config);  // resume as configured
    } else {
      request.config = Config::defaults();
    }
    for (const auto& assignment : args->overrides) request.config.apply_override(assignment);
    request.out_dir = args->out_dir;
    request.resume = args->resume;
    request.force = args->force;
    request.quiet = args->quiet;
    // Ctrl-C or a `kill` (a batch system's preemption) lets the step in progress finish and be
    // checkpointed; a second signal stops at once.
    install_stop_signal_handlers();
    const auto result = train_model(request);
    if (result.stopped_by_signal != 0) {
      exit_by_signal(result.stopped_by_signal,
                     fmt::format("moelab: stopped by {} after step {}; its checkpoint is in {} (continue with --resume)",
                                 signal_name(result.stopped_by_signal), result.last_step, args->out_dir));
    }
    // Under a launcher every rank returns the same figures; one of them prints them.
    if (LaunchEnvironment::from_environment().rank == 0) print_summary(result.summary, args->out_dir);
  });
}

}  // namespace moelab::cli
