// `moelab routes --run RUN_DIR [--split valid|test] [--csv FILE]`: how a trained model uses its
// experts on a split. Prints a per-expert load table with a text histogram and writes the counts as
// CSV (expert, assigned, fraction, importance) for plots.
#include <fmt/format.h>

#include <algorithm>
#include <sstream>

#include "commands.h"
#include "moelab/train/run_dir.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab::cli {

namespace {
struct RoutesArgs {
  std::string run_dir;
  std::string split = "valid";
  std::string data_dir;
  std::string csv;
  int64_t max_tokens = 0;
};

constexpr int kBarWidth = 40;
}  // namespace

void add_routes_command(CLI::App& app) {
  auto args = std::make_shared<RoutesArgs>();
  auto* cmd = app.add_subcommand("routes", "Per-expert load of a trained MoE model on a split (table + CSV)");
  cmd->add_option("--run", args->run_dir, "Run directory")->required();
  cmd->add_option("--split", args->split, "valid or test")->check(CLI::IsMember({"valid", "test"}))->capture_default_str();
  cmd->add_option("--data", args->data_dir, "Corpus directory (default: the run's data.corpus)");
  cmd->add_option("--csv", args->csv, "CSV output (default: RUN_DIR/routes-SPLIT.csv)");
  cmd->add_option("--max-tokens", args->max_tokens, "Route at most this many tokens (0 = all)");
  cmd->callback([args] {
    auto run = load_run(args->run_dir);
    if (run.model->moe_layers().empty()) fail("run {} has no MoE layer (moe.experts = 0 or moe.layer = dense)", args->run_dir);
    std::vector<RoutingStatsAccumulator> layers;
    const auto result = evaluate_run_split(run, args->split, args->data_dir, args->max_tokens, &layers);
    const auto& routing = layers.front();
    const auto counts = routing.assigned_counts();
    const auto load = routing.expert_load();
    const auto importance = routing.importance_sums();
    const double max_load = load.empty() ? 0.0 : *std::max_element(load.begin(), load.end());

    fmt::print("router {} on {} ({} tokens, perplexity {:.2f}, step {})\n", run.config.get_string("moe.router"),
               args->split, result.tokens, result.perplexity, run.step);
    fmt::print("{:>6}  {:>10}  {:>7}  {}\n", "expert", "slots", "share", "load (bar: share of the busiest expert)");
    std::ostringstream csv;
    csv << "expert,assigned,fraction,importance\n";
    for (size_t e = 0; e < counts.size(); ++e) {
      const int bar = max_load > 0 ? static_cast<int>(load[e] / max_load * kBarWidth + 0.5) : 0;
      fmt::print("{:>6}  {:>10.0f}  {:>6.2f}%  {}\n", e, counts[e], 100.0 * load[e], std::string(bar, '#'));
      csv << e << ',' << fmt::format("{:.0f}", counts[e]) << ',' << fmt::format("{:.6g}", load[e]) << ','
          << fmt::format("{:.6g}", importance[e]) << '\n';
    }
    fmt::print("load CV {:.3f}, max/mean {:.2f}, unused experts {}, dropped {:.2f}%", routing.load_cv(),
               routing.max_mean_load(), routing.unused_experts(), 100.0 * routing.dropped_frac());
    if (routing.has_router_logits())
      fmt::print(", routing entropy {:.3f} nats", routing.routing_entropy());
    fmt::print("\n");
    const std::string csv_path = args->csv.empty() ? args->run_dir + "/routes-" + args->split + ".csv" : args->csv;
    write_file_atomically(csv_path, csv.str());
    fmt::print("wrote {}\n", csv_path);
  });
}

}  // namespace moelab::cli
