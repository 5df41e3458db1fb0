#include "moelab/report/aggregate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "moelab/report/sweep.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab {

namespace fs = std::filesystem;

namespace {

constexpr double kAbsent = std::numeric_limits<double>::quiet_NaN();

void read_run_files(RunRecord& run) {
  const auto summary = run.directory + "/summary.json";
  if (file_exists(summary)) {
    try {
      run.summary = nlohmann::json::parse(read_text_file(summary));
    } catch (const nlohmann::json::exception& error) {
      fail("{}: unreadable: {}", summary, error.what());
    }
  }
  std::ifstream in(run.directory + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      run.metrics.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception&) {
      // a line cut short by a kill: the rest of the log is still worth plotting
    }
  }
}

nlohmann::json read_json_or_null(const std::string& path) {
  if (!file_exists(path)) return nullptr;
  try {
    return nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception&) {
    return nullptr;
  }
}

// Where an upcycled run starts (RunRecord::tokens_before): its source's figures when the source's
// folder is found (`source_dir`, else the path upcycle.json names), else the source's steps at this
// run's tokens per step and no seconds.
void read_continuation(RunRecord& run, std::string source_dir) {
  nlohmann::json upcycle = run.summary.is_object() ? run.summary.value("upcycle", nlohmann::json()) : nullptr;
  if (!upcycle.is_object()) upcycle = read_json_or_null(run.directory + "/upcycle.json");
  if (!upcycle.is_object()) return;
  if (source_dir.empty()) source_dir = upcycle.value("from", std::string());
  const auto source = source_dir.empty() ? nlohmann::json() : read_json_or_null(source_dir + "/summary.json");
  double tokens_per_step = run.summary.is_object() ? run.summary.value("tokens_per_step", 0.0) : 0.0;
  if (source.is_object()) {
    tokens_per_step = source.value("tokens_per_step", tokens_per_step);
    run.seconds_before = source.value("train_seconds", 0.0);
  }
  run.tokens_before = upcycle.value("source_step", 0.0) * tokens_per_step;
}

std::string human_count(double v) {
  if (std::abs(v) >= 1e9) return fmt::format("{:.2f}G", v / 1e9);
  if (std::abs(v) >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (std::abs(v) >= 1e4) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

// Counts read better as 1.23M; ratios and small figures keep significant digits. `magnitude` picks
// the decimals, so a standard deviation is printed to the same precision as its mean.
std::string format_value(const std::string& key, double v, double magnitude) {
  if (key.rfind("params", 0) == 0 || key.rfind("flops_per_", 0) == 0 || key == "tokens_per_s") return human_count(v);
  if (key == "dropped_frac") return fmt::format("{:.2f}%", 100 * v);
  if (std::abs(magnitude) >= 100) return fmt::format("{:.1f}", v);
  if (std::abs(magnitude) >= 1) return fmt::format("{:.2f}", v);
  return fmt::format("{:.3f}", v);
}

}  // namespace

std::vector<RunRecord> load_runs(const std::string& directory) {
  if (!fs::is_directory(directory)) fail("{} is not a directory", directory);
  std::vector<RunRecord> runs;
  if (file_exists(directory + "/sweep.json")) {
    const auto manifest = read_sweep_manifest(directory);
    for (const auto& entry : manifest.at("runs")) {
      RunRecord run;
      run.variant = entry.at("variant").get<std::string>();
      run.seed = entry.at("seed").get<int64_t>();
      run.directory = directory + "/" + entry.at("directory").get<std::string>();
      run.status = entry.value("status", "pending");
      run.error = entry.value("error", "");
      read_run_files(run);
      const auto upcycle = entry.value("upcycle", nlohmann::json());
      read_continuation(run, upcycle.is_object() ? directory + "/" + upcycle.value("from", std::string()) : "");
      // The manifest may be stale (a sweep killed mid-run); the files are the truth.
      if (!run.summary.is_null()) run.status = "finished";
      runs.push_back(run);
    }
  } else if (file_exists(directory + "/config.toml")) {
    RunRecord run;
    run.variant = fs::path(directory).lexically_normal().filename().string();
    if (run.variant.empty()) run.variant = fs::path(directory).lexically_normal().parent_path().filename().string();
    run.directory = directory;
    read_run_files(run);
    read_continuation(run, "");
    run.seed = run.summary.is_null() ? 0 : 1;
    run.status = run.summary.is_null() ? "unfinished" : "finished";
    runs.push_back(run);
  } else {
    fail("{} is neither a sweep directory (sweep.json) nor a run directory (config.toml)", directory);
  }
  return runs;
}

MetricStats summarize(const std::vector<double>& values) {
  MetricStats stats;
  double sum = 0;
  for (const double v : values)
    if (std::isfinite(v)) sum += v, ++stats.n;
  if (stats.n == 0) return stats;
  stats.mean = sum / static_cast<double>(stats.n);
  if (stats.n < 2) return stats;
  // Equal values have no spread; the sum's rounding would otherwise give them one (a table's "± 0").
  const auto finite = [](double v) { return std::isfinite(v); };
  const auto first = std::find_if(values.begin(), values.end(), finite);
  if (std::all_of(first, values.end(), [&](double v) { return !finite(v) || v == *first; })) {
    stats.mean = *first;
    return stats;
  }
  double squares = 0;
  for (const double v : values)
    if (std::isfinite(v)) squares += (v - stats.mean) * (v - stats.mean);
  stats.std = std::sqrt(squares / static_cast<double>(stats.n - 1));
  return stats;
}

double summary_metric(const nlohmann::json& summary, const std::string& key) {
  if (!summary.is_object()) return kAbsent;
  if (summary.contains(key) && summary[key].is_number()) return summary[key].get<double>();
  const auto layers = summary.find("moe_layers");
  if (layers != summary.end() && layers->is_array() && !layers->empty()) {
    const auto& first = (*layers)[0];
    if (first.contains(key) && first[key].is_number()) return first[key].get<double>();
  }
  return kAbsent;
}

double run_metric(const RunRecord& run, const std::string& key) {
  const std::string train_prefix = "train_";
  if (key.rfind(train_prefix, 0) != 0) return summary_metric(run.summary, key);
  // train_X: the mean of the first MoE layer's X over the last quarter of training's logging
  // windows: routing as trained (noise on, training batches), where the summary's X is the
  // validation pass (noise off).
  const std::string layer_key = key.substr(train_prefix.size());
  std::vector<double> windows;
  for (const auto& record : run.metrics)
    if (record.contains("loss") && record.contains("moe_layers") && !record["moe_layers"].empty() &&
        record["moe_layers"][0].contains(layer_key) && record["moe_layers"][0][layer_key].is_number())
      windows.push_back(record["moe_layers"][0][layer_key].get<double>());
  if (windows.empty()) return kAbsent;
  const size_t first = windows.size() - std::max<size_t>(1, windows.size() / 4);
  return summarize(std::vector<double>(windows.begin() + static_cast<std::ptrdiff_t>(first), windows.end())).mean;
}

const std::vector<ReportColumn>& report_columns() {
  static const std::vector<ReportColumn> columns = {
      {"valid_ppl", "valid ppl", true},
      {"test_ppl", "test ppl", true},
      {"valid_token_acc", "valid token acc", false},
      {"valid_entity_f1", "valid entity F1", false},
      {"test_entity_f1", "test entity F1", false},
      {"valid_em", "valid EM", false},
      {"valid_f1", "valid F1", false},
      {"valid_bleu", "valid BLEU", false},
      {"test_bleu", "test BLEU", false},
      {"test_chrf", "test chrF2", false},
      {"params_total", "params total", true},
      {"params_active_per_token", "params active/token", true},
      {"flops_per_token", "FLOPs/token", true},
      // Translation: per target token counts the encoder's share too; this one is per token of
      // either side, the figure translation papers quote.
      {"flops_per_source_target_token", "FLOPs/(src+tgt) token", true},
      {"tokens_per_s", "train tokens/s", false},
      {"epoch_seconds", "s/epoch", true},
      {"peak_rss_mb", "peak RSS MiB", true},
      {"eval_us_per_token", "eval µs/token", true},
      {"load_cv", "CV(load)", true},
      {"train_load_cv", "CV(load) train", true},
      {"importance_cv", "CV(importance)", true},
      {"max_mean_load", "max/mean load", true},
      {"train_maxvio_batch", "MaxVio batch train", true},
      {"maxvio", "MaxVio global", true},
      {"experts_per_token", "experts/token", true},
      {"dropped_frac", "dropped", true},
  };
  return columns;
}

const ReportColumn* report_column(const std::string& key) {
  const auto& columns = report_columns();
  const auto found = std::find_if(columns.begin(), columns.end(), [&](const ReportColumn& c) { return c.key == key; });
  return found == columns.end() ? nullptr : &*found;
}

std::vector<VariantResult> aggregate_runs(const std::vector<RunRecord>& runs) {
  std::vector<VariantResult> variants;
  for (const auto& run : runs) {
    auto found = std::find_if(variants.begin(), variants.end(), [&](const VariantResult& v) { return v.name == run.variant; });
    if (found == variants.end()) {
      variants.push_back(VariantResult{run.variant, {}, {}, {}});
      found = variants.end() - 1;
    }
    (run.status == "finished" ? found->finished : found->unfinished).push_back(&run);
  }
  for (auto& variant : variants) {
    for (const auto& column : report_columns()) {
      std::vector<double> values;
      for (const auto* run : variant.finished) values.push_back(run_metric(*run, column.key));
      const auto stats = summarize(values);
      if (stats.n > 0) variant.metrics[column.key] = stats;
    }
  }
  return variants;
}

namespace {

std::vector<ReportColumn> present_columns(const std::vector<VariantResult>& variants) {
  std::vector<ReportColumn> present;
  for (const auto& column : report_columns())
    for (const auto& variant : variants)
      if (variant.metrics.count(column.key)) {
        present.push_back(column);
        break;
      }
  return present;
}

}  // namespace

std::string results_markdown(const std::vector<VariantResult>& variants) {
  const auto columns = present_columns(variants);
  std::string out = "| variant | seeds |";
  std::string rule = "|---|---:|";
  for (const auto& column : columns) {
    out += fmt::format(" {} {} |", column.label, column.lower_is_better ? "↓" : "↑");
    rule += "---:|";
  }
  out += "\n" + rule + "\n";
  // The best mean per column; ties all get the mark. A column where every variant has the same
  // value (or only one has any) marks nothing.
  std::map<std::string, double> best;
  for (const auto& column : columns) {
    std::vector<double> means;
    for (const auto& variant : variants) {
      const auto found = variant.metrics.find(column.key);
      if (found != variant.metrics.end()) means.push_back(found->second.mean);
    }
    const auto [lo, hi] = std::minmax_element(means.begin(), means.end());
    if (means.size() >= 2 && *lo != *hi) best[column.key] = column.lower_is_better ? *lo : *hi;
  }
  for (const auto& variant : variants) {
    std::string seeds = std::to_string(variant.finished.size());
    if (!variant.unfinished.empty()) seeds += fmt::format(" (+{} not finished)", variant.unfinished.size());
    out += fmt::format("| {} | {} |", variant.name, seeds);
    for (const auto& column : columns) {
      const auto found = variant.metrics.find(column.key);
      if (found == variant.metrics.end()) {
        out += " – |";
        continue;
      }
      const auto& s = found->second;
      std::string cell = format_value(column.key, s.mean, s.mean);
      // Figures fixed by the config (parameters, FLOPs) have no spread worth printing.
      if (s.n >= 2 && s.std > 0) cell += " ± " + format_value(column.key, s.std, s.mean);
      if (best.count(column.key) && s.mean == best[column.key]) cell = "**" + cell + "**";
      out += " " + cell + " |";
    }
    out += "\n";
  }
  return out;
}

std::string comparison_markdown(const std::vector<VariantResult>& variants, const std::string& key,
                                const std::map<std::string, std::string>& baselines) {
  // Each variant's finished seeds on `key`, read once; the default baseline is the first with any.
  std::vector<std::vector<double>> values(variants.size());
  std::map<std::string, size_t> index_of;
  for (size_t i = 0; i < variants.size(); ++i) {
    index_of[variants[i].name] = i;
    for (const auto* run : variants[i].finished)
      if (const double v = run_metric(*run, key); std::isfinite(v)) values[i].push_back(v);
  }
  const auto first = std::find_if(values.begin(), values.end(), [](const auto& v) { return !v.empty(); });
  if (first == values.end()) return "";
  const size_t default_baseline = static_cast<size_t>(first - values.begin());
  const auto* column = report_column(key);
  const bool lower_is_better = column == nullptr || column->lower_is_better;
  std::string rows;
  bool default_used = false;
  for (size_t i = 0; i < variants.size(); ++i) {
    if (values[i].empty()) continue;
    const auto [lo, hi] = std::minmax_element(values[i].begin(), values[i].end());
    size_t baseline = default_baseline;
    bool by_default = true;
    if (const auto named = baselines.find(variants[i].name); named != baselines.end() && !named->second.empty()) {
      if (named->second == kNoBaseline) continue;
      const auto found = index_of.find(named->second);
      if (found == index_of.end() || values[found->second].empty()) {
        // Measuring against another variant instead would put a comparison the study did not ask for
        // under this variant's name.
        rows += fmt::format("| {} | {} | {} (no finished runs) | – | – | {:.2f} … {:.2f} | baseline not finished |\n",
                            variants[i].name, values[i].size(), named->second, *lo, *hi);
        continue;
      }
      baseline = found->second;
      by_default = false;
    }
    if (i == baseline) continue;
    default_used = default_used || by_default;
    const auto base_stats = summarize(values[baseline]);
    const auto [base_lo, base_hi] = std::minmax_element(values[baseline].begin(), values[baseline].end());
    const auto stats = summarize(values[i]);
    // Apart only when both sides have several seeds: one seed says nothing about the spread.
    const bool spread_known = stats.n >= 2 && base_stats.n >= 2;
    std::string verdict = stats.n < 2 ? "one seed: spread unknown" : "baseline of one seed: its spread unknown";
    std::string error = "–";
    if (spread_known) {
      const bool below = *hi < *base_lo, above = *lo > *base_hi;
      if (below || above) {
        verdict = fmt::format("{}, beyond the seed spread", below ? "lower" : "higher");
        if (below == lower_is_better) verdict = "**" + verdict + "**";  // the better side in bold
      } else {
        verdict = "within the seed spread";
      }
      const double variance = stats.std * stats.std / stats.n + base_stats.std * base_stats.std / base_stats.n;
      error = fmt::format("{:.2f}", std::sqrt(variance));
    }
    rows += fmt::format("| {} | {} | {} ({} seed{}, {:.2f} … {:.2f}) | {:+.2f} | {} | {:.2f} … {:.2f} | {} |\n",
                        variants[i].name, stats.n, variants[baseline].name, base_stats.n, base_stats.n == 1 ? "" : "s",
                        *base_lo, *base_hi,
                        stats.mean - base_stats.mean, error, *lo, *hi, verdict);
  }
  if (rows.empty()) return "";
  const std::string against =
      default_used ? fmt::format("Each variant against `{}`, or against the baseline the study names for it",
                                 variants[default_baseline].name)
                   : std::string("Each variant against the baseline the study names for it");
  return fmt::format("{}: difference of the mean {} ({} is better), its standard error, each variant's range over "
                     "seeds, and whether the two ranges overlap.\n\n"
                     "| variant | seeds | baseline | Δ mean | standard error | range | against the baseline |\n"
                     "|---|---:|---|---:|---:|---|---|\n",
                     against, column == nullptr ? key : column->label, lower_is_better ? "negative" : "positive") +
         rows;
}

const std::vector<std::string>& headline_validation_keys() {
  static const std::vector<std::string> keys = {"valid_bleu",      "valid_ppl", "valid_entity_f1",
                                                "valid_token_acc", "valid_f1",  "valid_em"};
  return keys;
}

const std::vector<std::string>& headline_metrics() {
  static const std::vector<std::string> keys = {"valid_ppl", "test_bleu", "test_entity_f1", "valid_f1"};
  return keys;
}

std::string results_csv(const std::vector<VariantResult>& variants) {
  const auto columns = present_columns(variants);
  std::string out = "variant,n";
  for (const auto& column : columns) out += "," + column.key + "_mean," + column.key + "_std";
  out += "\n";
  for (const auto& variant : variants) {
    out += fmt::format("{},{}", variant.name, variant.finished.size());
    for (const auto& column : columns) {
      const auto found = variant.metrics.find(column.key);
      if (found == variant.metrics.end()) out += ",,";
      else out += fmt::format(",{},{}", found->second.mean, found->second.std);
    }
    out += "\n";
  }
  return out;
}

nlohmann::json results_json(const std::vector<VariantResult>& variants) {
  nlohmann::json out = {{"variants", nlohmann::json::array()}, {"runs", nlohmann::json::array()}};
  for (const auto& variant : variants) {
    nlohmann::json v = {{"name", variant.name}, {"finished", variant.finished.size()},
                        {"unfinished", variant.unfinished.size()}, {"metrics", nlohmann::json::object()}};
    for (const auto& [key, s] : variant.metrics) v["metrics"][key] = {{"mean", s.mean}, {"std", s.std}, {"n", s.n}};
    out["variants"].push_back(v);
    for (const auto* runs : {&variant.finished, &variant.unfinished})
      for (const auto* run : *runs)
        out["runs"].push_back({{"variant", run->variant}, {"seed", run->seed}, {"directory", run->directory},
                               {"status", run->status}, {"error", run->error}, {"summary", run->summary}});
  }
  return out;
}

std::string moe_layers_markdown(const std::vector<VariantResult>& variants) {
  // Only models with several MoE layers need this table: one layer's figures are in the results table.
  bool any = false;
  for (const auto& variant : variants)
    for (const auto* run : variant.finished)
      any |= run->summary.contains("moe_layers") && run->summary["moe_layers"].size() > 1;
  if (!any) return "";
  std::string out =
      "| variant | MoE layer | CV(load) ↓ | CV(importance) ↓ | max/mean load ↓ | MaxVio batch ↓ | top 20 % load | "
      "bottom 20 % load | dropped % ↓ | unused experts ↓ | routing entropy (nats) | input RMS |\n"
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  auto cell = [](const std::vector<double>& values, double scale, const char* format) {
    const auto s = summarize(values);
    if (s.n == 0) return std::string("–");
    std::string text = fmt::format(fmt::runtime(format), scale * s.mean);
    if (s.n >= 2 && s.std > 0) text += " ± " + fmt::format(fmt::runtime(format), scale * s.std);
    return text;
  };
  for (const auto& variant : variants) {
    if (variant.finished.empty()) continue;
    const auto& first = variant.finished.front()->summary;
    if (!first.contains("moe_layers")) continue;
    for (size_t layer = 0; layer < first["moe_layers"].size(); ++layer) {
      std::map<std::string, std::vector<double>> values;
      for (const auto* run : variant.finished) {
        const auto& layers = run->summary["moe_layers"];
        if (layer >= layers.size()) continue;
        for (const char* key : {"load_cv", "importance_cv", "max_mean_load", "maxvio_batch", "top20_load",
                                "bottom20_load", "dropped_frac", "unused_experts", "routing_entropy", "input_rms"})
          if (layers[layer].contains(key) && layers[layer][key].is_number()) values[key].push_back(layers[layer][key].get<double>());
      }
      out += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", variant.name,
                         first["moe_layers"][layer].value("name", std::to_string(layer)), cell(values["load_cv"], 1, "{:.3f}"),
                         cell(values["importance_cv"], 1, "{:.3f}"), cell(values["max_mean_load"], 1, "{:.2f}"),
                         cell(values["maxvio_batch"], 1, "{:.3f}"), cell(values["top20_load"], 100, "{:.1f} %"),
                         cell(values["bottom20_load"], 100, "{:.1f} %"), cell(values["dropped_frac"], 100, "{:.2f}"),
                         cell(values["unused_experts"], 1, "{:.1f}"), cell(values["routing_entropy"], 1, "{:.2f}"),
                         cell(values["input_rms"], 1, "{:.3f}"));
    }
  }
  return out;
}

}  // namespace moelab
