// `moelab routes --run RUN_DIR [--split valid|test] [--csv FILE] [--top-tokens N]`: how a trained
// model uses its experts on a split. Prints a per-expert load table with a text histogram and writes
// the counts as CSV (expert, assigned, fraction, importance) for plots. With --top-tokens, also what
// each expert of the first MoE layer specialises in (Shazeer et al. 2017, Table 9): the N tokens
// the largest share of whose occurrences it receives, and the token x expert counts as CSV.
#include <fmt/format.h>

#include <algorithm>
#include <optional>
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
  int64_t top_tokens = 0;
  int64_t min_count = 10;
};

// Token-slot counts [V, E] of one MoE layer and the tokens' occurrences [V], filled while the model
// runs over a split.
class TokenExpertCounts {
 public:
  TokenExpertCounts(int64_t vocabulary, int64_t experts)
      : counts_(torch::zeros({vocabulary, experts}, torch::kFloat64)),
        occurrences_(torch::zeros({vocabulary}, torch::kFloat64)),
        experts_(experts) {}

  void add(const Routing& routing, const torch::Tensor& token_ids) {
    if (!token_ids.defined()) fail("--top-tokens needs the token ids at the MoE layer; this model does not pass them");
    const auto index = routing.expert_index.to(torch::kCPU);
    const auto tokens = token_ids.to(torch::kCPU).unsqueeze(1).expand_as(index);
    const auto kept = index >= 0;
    const auto cell = tokens.masked_select(kept) * experts_ + index.masked_select(kept);
    counts_.view({-1}).index_add_(0, cell, torch::ones({cell.numel()}, torch::kFloat64));
    const auto ids = token_ids.to(torch::kCPU, torch::kInt64);
    occurrences_.index_add_(0, ids, torch::ones({ids.numel()}, torch::kFloat64));
  }

  // For expert e, up to n tokens seen at least min_count times, by the share of their occurrences
  // routed to e (ties: more frequent first): share = slots(token, e) / occurrences(token), in [0, 1].
  struct Entry {
    int64_t token;
    double share;
    double count;
  };
  std::vector<Entry> top(int64_t expert, int64_t n, int64_t min_count) const {
    std::vector<Entry> entries;
    const auto* c = counts_.data_ptr<double>();
    const auto* t = occurrences_.data_ptr<double>();
    for (int64_t v = 0; v < counts_.size(0); ++v)
      if (t[v] >= static_cast<double>(min_count) && c[v * experts_ + expert] > 0)
        entries.push_back({v, c[v * experts_ + expert] / t[v], t[v]});
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      return a.share != b.share ? a.share > b.share : a.count > b.count;
    });
    if (static_cast<int64_t>(entries.size()) > n) entries.resize(static_cast<size_t>(n));
    return entries;
  }

  std::string csv(const Vocabulary& vocabulary) const {
    std::ostringstream out;
    out << "token,occurrences";
    for (int64_t e = 0; e < experts_; ++e) out << ",expert_" << e;
    out << '\n';
    const auto* c = counts_.data_ptr<double>();
    const auto* t = occurrences_.data_ptr<double>();
    for (int64_t v = 0; v < counts_.size(0); ++v) {
      if (t[v] == 0) continue;
      out << csv_field(vocabulary.token(v)) << ',' << fmt::format("{:.0f}", t[v]);
      for (int64_t e = 0; e < experts_; ++e) out << ',' << fmt::format("{:.0f}", c[v * experts_ + e]);
      out << '\n';
    }
    return out.str();
  }

 private:
  // A token may hold a comma or a quote: quoted as RFC 4180 asks.
  static std::string csv_field(const std::string& text) {
    if (text.find_first_of(",\"\n") == std::string::npos) return text;
    std::string quoted = "\"";
    for (char ch : text) quoted += ch == '"' ? std::string("\"\"") : std::string(1, ch);
    return quoted + "\"";
  }

  torch::Tensor counts_;
  torch::Tensor occurrences_;
  int64_t experts_;
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
  cmd->add_option("--top-tokens", args->top_tokens,
                  "List, per expert of the first MoE layer, the N tokens it receives the largest share of, and "
                  "write the token x expert counts to RUN_DIR/routes-tokens-SPLIT.csv (0 = off)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--min-count", args->min_count, "--top-tokens: only tokens seen at least this often")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->callback([args] {
    auto run = load_run(args->run_dir);
    if (run.model->moe_layers().empty()) fail("run {} has no MoE layer (moe.experts = 0 or moe.layer = dense)", args->run_dir);
    std::vector<RoutingStatsAccumulator> layers;
    auto first_layer = run.model->moe_layers().front().layer;
    std::optional<TokenExpertCounts> token_counts;
    if (args->top_tokens > 0) {
      token_counts.emplace(run.vocabulary.size(), first_layer->options.num_experts());
      first_layer->routing_observer = [&](const Routing& routing, const torch::Tensor& ids) { token_counts->add(routing, ids); };
    }
    const auto result = evaluate_run_split(run, args->split, args->data_dir, args->max_tokens, &layers);
    first_layer->routing_observer = nullptr;
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
    if (!token_counts) return;
    fmt::print("\nwhat each expert receives most (share of the token's occurrences routed to it, occurrences; tokens seen >= {} "
               "times):\n",
               args->min_count);
    for (int64_t e = 0; e < first_layer->options.num_experts(); ++e) {
      std::string line;
      for (const auto& entry : token_counts->top(e, args->top_tokens, args->min_count))
        line += fmt::format("{}{} ({:.0f}%, {:.0f})", line.empty() ? "" : ", ", run.vocabulary.token(entry.token),
                            100.0 * entry.share, entry.count);
      fmt::print("{:>6}  {}\n", e, line.empty() ? "-" : line);
    }
    const std::string tokens_path = args->run_dir + "/routes-tokens-" + args->split + ".csv";
    write_file_atomically(tokens_path, token_counts->csv(run.vocabulary));
    fmt::print("wrote {}\n", tokens_path);
  });
}

}  // namespace moelab::cli
