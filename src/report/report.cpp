#include "moelab/report/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include "moelab/config/config.h"
#include "moelab/report/aggregate.h"
#include "moelab/report/plots.h"
#include "moelab/report/sweep.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab {

namespace fs = std::filesystem;

namespace {

std::string join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? separator : "") + parts[i];
  return out;
}

// How to re-create one run by hand: its resolved config is in its directory.
std::string run_command(const RunRecord& run) {
  return fmt::format("moelab train --config {}/config.toml --out {}", run.directory, run.directory);
}

// A run's resolved config, or nothing for a kept run without one: what the report reads from it
// is then left out rather than failing the whole report.
std::optional<Config> run_config(const RunRecord& run) {
  try {
    return Config::from_toml_file(run.directory + "/config.toml");
  } catch (const Error&) {
    return std::nullopt;
  }
}

// One line when every run shares a setup, else each setup with its run count under a bold warning.
std::string setups_markdown(const std::map<std::string, int>& setups, const std::string& lead,
                            const std::string& differ) {
  if (setups.empty()) return "";
  if (setups.size() == 1) return lead + ": " + setups.begin()->first + ".\n\n";
  std::string md = lead + "; **" + differ + "**:\n\n";
  for (const auto& [setup, count] : setups) md += fmt::format("- {} run{}: {}\n", count, count == 1 ? "" : "s", setup);
  return md + "\n";
}

// Translation scores compare only under one scoring setup, so the report names it and says so
// loudly when runs differ: the test set (its reference length catches a truncated one), the
// decoding that made the hypotheses, and sacreBLEU's settings.
std::string scoring_markdown(const std::vector<RunRecord>& runs) {
  std::map<std::string, int> setups;
  for (const auto& run : runs) {
    if (!run.summary.is_object() || !run.summary.contains("test_bleu")) continue;
    std::string decoding = "decoding not recorded";
    if (const auto config = run_config(run))
      decoding = fmt::format("beam {}, length penalty α {}, at most {} × source length + 10 tokens",
                             config->get_int("decode.beam"), config->get_float("decode.alpha"),
                             config->get_float("decode.max_ratio"));
    std::string reference_length = "not recorded";
    const auto line = run.summary.value("test_bleu_line", std::string());
    if (const auto at = line.find("ref_len = "); at != std::string::npos)
      reference_length = line.substr(at + 10, line.find_first_not_of("0123456789", at + 10) - (at + 10));
    ++setups[fmt::format("test source `{}` ({} reference tokens), {}; BLEU signature `{}`, chrF2 signature `{}`",
                         run.summary.value("test_file", std::string("(not recorded)")), reference_length, decoding,
                         run.summary.value("bleu_signature", std::string("(not recorded)")),
                         run.summary.value("chrf_signature", std::string("(not recorded)")))];
  }
  return setups_markdown(setups, "Test BLEU and chrF2 are computed as sacreBLEU computes them, on detokenised output",
                         "the runs were not scored alike, so their test figures do not compare");
}

// Speed figures compare only between runs timed alike: same CPU (or GPU), same thread count. A study
// that spans sessions may land on other machines; the report says so rather than rank them.
std::string timing_markdown(const std::vector<RunRecord>& runs) {
  std::map<std::string, int> setups;
  for (const auto& run : runs) {
    if (!run.summary.is_object() || !run.summary.contains("threads")) continue;
    const auto threads = run.summary.value("threads", int64_t{0});
    const auto device = run.summary.value("device", std::string("cpu"));
    ++setups[fmt::format("{} thread{} on {}{}", threads, threads == 1 ? "" : "s",
                         run.summary.value("cpu", std::string("a CPU the run did not record")),
                         device == "cpu" ? "" : ", device " + device)];
  }
  return setups_markdown(setups, "Speed figures (tokens/s, s/epoch, µs/token, latency) are each run's own measurement",
                         "the runs were timed on different machines or thread counts, so their speed figures do "
                         "not compare");
}

// How far an unfinished run got, from its files: a study that spans days is followed here.
std::string progress_note(const RunRecord& run) {
  int64_t last_step = -1, valid_step = -1;
  std::string valid;
  for (const auto& record : run.metrics) {
    if (!record.contains("step") || !record["step"].is_number_integer()) continue;
    const int64_t step = record["step"].get<int64_t>();
    last_step = std::max(last_step, step);
    for (const auto& key : headline_validation_keys())
      if (record.contains(key) && record[key].is_number()) {
        valid = fmt::format("{} {:.2f}", report_column(key)->label, record[key].get<double>());
        valid_step = step;
        break;
      }
  }
  if (last_step < 0) return "";
  std::string of;  // without a config, the step alone
  if (const auto config = run_config(run)) of = fmt::format(" of {}", config->get_int("train.steps"));
  auto note = fmt::format(", at step {}{}", last_step, of);
  if (valid_step >= 0) note += fmt::format(", last validation {} at step {}", valid, valid_step);
  return note;
}

}  // namespace

std::string write_report(const ReportOptions& options) {
  const auto runs = load_runs(options.input_dir);
  const auto variants = aggregate_runs(runs);
  int64_t finished = 0;
  for (const auto& v : variants) finished += static_cast<int64_t>(v.finished.size());
  if (finished == 0) fail("{}: no finished run to report on (no summary.json yet)", options.input_dir);
  const std::string out_dir = options.out_dir.empty() ? options.input_dir : options.out_dir;
  fs::create_directories(out_dir);

  nlohmann::json manifest;
  if (file_exists(options.input_dir + "/sweep.json")) manifest = read_sweep_manifest(options.input_dir);
  const std::string title = manifest.is_object() && !manifest.value("title", "").empty()
                                ? manifest.value("title", "")
                                : "moelab report: " + fs::path(options.input_dir).lexically_normal().filename().string();

  const auto plots = write_plots(variants, out_dir);
  write_file_atomically(out_dir + "/results.csv", results_csv(variants));
  auto json = results_json(variants);
  json["sweep"] = manifest;
  write_file_atomically(out_dir + "/results.json", json.dump(2) + "\n");

  std::string md = "# " + title + "\n\n";
  if (manifest.is_object() && !manifest.value("description", "").empty()) md += manifest.value("description", "") + "\n\n";
  md += "## Results\n\n";
  md += fmt::format("Mean ± sample standard deviation over seeds (the `seeds` column counts finished runs); the best "
                    "mean of each column is in bold (↓ lower is better, ↑ higher). Load figures are the first MoE "
                    "layer's: CV(load), CV(importance), max/mean load and dropped from the validation pass (no gate "
                    "noise), CV(load) train from the last quarter of training's logging windows. {} variants, {} "
                    "finished runs.\n\n",
                    variants.size(), finished);
  md += results_markdown(variants) + "\n";
  md += scoring_markdown(runs);
  md += timing_markdown(runs);
  // The baselines a study names for its variants (sweep.json records them with each run).
  std::map<std::string, std::string> baselines;
  if (manifest.is_object())
    for (const auto& entry : manifest.value("runs", nlohmann::json::array()))
      if (entry.contains("baseline")) baselines[entry.value("variant", "")] = entry.value("baseline", "");
  for (const auto& key : headline_metrics()) {
    const auto against = comparison_markdown(variants, key, baselines);
    if (against.empty()) continue;
    md += fmt::format("### Against the baseline: {}\n\n", report_column(key)->label) + against + "\n";
  }
  if (const auto layers = moe_layers_markdown(variants); !layers.empty())
    md += "### Load balance of every MoE layer\n\nValidation pass, mean ± std over seeds, one row per MoE layer "
          "(bottom to top). Routing entropy: the mean over tokens of the entropy of the softmax over all the "
          "router's logits (uniform over E experts: ln E); input RMS: the root mean square of what the layer reads.\n\n" +
          layers + "\n";
  std::vector<std::string> failures;
  for (const auto& run : runs)
    if (run.status == "failed")
      failures.push_back(fmt::format("- `{}` seed {}: {}", run.variant, run.seed, run.error));
    else if (run.status != "finished")
      failures.push_back(fmt::format("- `{}` seed {}: {}{} (not in the table)", run.variant, run.seed, run.status,
                                     progress_note(run)));
  if (!failures.empty()) md += "Runs missing from the table:\n\n" + join(failures, "\n") + "\n\n";

  md += "## Plots\n\n";
  for (const auto& plot : plots) {
    if (plot.file.empty())
      md += fmt::format("### {}\n\n*{}*\n\n", plot.title, plot.caption);
    else
      md += fmt::format("### {}\n\n![{}]({})\n\n{}\n\n", plot.title, plot.title, plot.file, plot.caption);
  }

  md += "## How these numbers were made\n\n";
  if (manifest.is_object()) {
    md += fmt::format("- Sweep: `{}`\n", manifest.value("command", std::string("(not recorded)")));
    const auto commit = manifest.value("git_commit", std::string());
    md += fmt::format("- Checkout at the sweep's last invocation: `{}`{}\n",
                      commit.empty() ? "unknown (not run from a git checkout)" : commit,
                      manifest.value("git_dirty", false) ? " with uncommitted changes" : "");
    md += fmt::format("- Seeds: `train.seed` = 1 … {} per variant; {} run(s) side by side, {} thread(s) each (tokens/s "
                      "and times are from runs sharing the machine that way)\n",
                      manifest.value("seeds", 0), manifest.value("jobs", 1), manifest.value("threads_per_run", 0));
    if (manifest.value("scale", 1.0) != 1.0) md += fmt::format("- Study scale: {}\n", manifest.value("scale", 1.0));
  }
  // The binary that trained each run, from its summary.json (earlier builds did not record it).
  std::map<std::string, int> runs_per_binary;
  for (const auto& run : runs)
    if (run.summary.is_object()) ++runs_per_binary[run.summary.value("moelab_commit", std::string("not recorded"))];
  if (!runs_per_binary.empty()) {
    md += "- Binaries that trained the finished runs (their build commit):";
    for (const auto& [binary, count] : runs_per_binary)
      md += fmt::format(" `{}` ({} run{});", binary, count, count == 1 ? "" : "s");
    md.back() = '\n';
  }
  md += fmt::format("- Report: `{}`\n", options.command);
  md += "- Each run's resolved config is `config.toml` in its directory; one run again: `" + run_command(runs.front()) +
        "` (with another `--out`).\n\n";
  md += "Run directories:\n\n";
  for (const auto& run : runs) md += fmt::format("- `{}` (seed {}): {}\n", run.directory, run.seed, run.status);
  if (!options.machine.empty()) md += "\nMachine (`moelab info --system`):\n\n```\n" + options.machine + "\n```\n";
  const auto path = out_dir + "/report.md";
  write_file_atomically(path, md);
  return path;
}

}  // namespace moelab
