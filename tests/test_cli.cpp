// End-to-end tests of the `moelab` executable: exit codes, one-line error messages, and that a
// refused command leaves what an earlier run wrote untouched. Tiny made-up corpora and models
// only: no network, no ../shared/data, never the real `bible` program.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "moelab/dispatch/grouped_path.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/util/blas_env.h"
#include "moelab/util/build_commit.h"
#include "moelab/util/libstdcxx_binding.h"
#include "test_util.h"
#include "moelab/device/device.h"

using moelab::testing::CommandResult;
using moelab::testing::make_corpus;
using moelab::testing::moelab_executable;
using moelab::testing::read_file;
using moelab::testing::run_moelab;
using moelab::testing::run_shell;
using moelab::testing::sq;
using moelab::testing::TempDir;
using moelab::testing::write_file;

namespace fs = std::filesystem;

namespace {


// Flags for a tiny model that trains in about a second.
std::string tiny_flags(const std::string& corpus) {
  return "--quiet --set data.corpus=" + sq(corpus) +
         " --set model.embed=16 --set model.hidden=16 --set moe.experts=4 --set moe.k=2"
         " --set moe.expert_hidden=16 --set train.batch=4 --set train.bptt=8 --set train.steps=6"
         " --set train.threads=1 --set train.checkpoint_every=3 --set train.warmup=0";
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

// The command failed, and all it printed is one line "moelab: error: ..." holding `needle`.
void expect_one_line_error(const CommandResult& r, const std::string& needle) {
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << "expected '" << needle << "' in:\n" << r.output;
  const auto lines = lines_of(r.output);
  ASSERT_EQ(lines.size(), 1u) << "expected a one-line message, got:\n" << r.output;
  EXPECT_EQ(lines[0].rfind("moelab: error: ", 0), 0u) << lines[0];
  EXPECT_TRUE(!r.output.empty() && r.output.back() == '\n') << r.output;
}

// Byte contents of every regular file in a directory, to prove that nothing was touched.
std::vector<std::pair<std::string, std::string>> snapshot(const std::string& dir) {
  std::vector<std::pair<std::string, std::string>> files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file()) files.emplace_back(entry.path().filename().string(), read_file(entry.path().string()));
  std::sort(files.begin(), files.end());
  return files;
}

void expect_same_files(const std::vector<std::pair<std::string, std::string>>& before, const std::string& dir) {
  const auto after = snapshot(dir);
  auto names = [](const std::vector<std::pair<std::string, std::string>>& files) {
    std::string list;
    for (const auto& file : files) list += " " + file.first;
    return list.empty() ? std::string(" (none)") : list;
  };
  ASSERT_EQ(before.size(), after.size()) << "files were added or removed in " << dir << ": before" << names(before)
                                         << "; after" << names(after);
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_EQ(before[i].first, after[i].first);
    EXPECT_TRUE(before[i].second == after[i].second) << before[i].first << " changed in " << dir;
  }
}

nlohmann::json parse_json_line(const std::string& output) {
  // The last non-empty line of the output is the JSON object.
  const auto lines = lines_of(output);
  for (auto it = lines.rbegin(); it != lines.rend(); ++it)
    if (!it->empty()) return nlohmann::json::parse(*it);
  throw std::runtime_error("no output");
}

// `eval --json --run RUN` through two commands (two devices, or two builds' moelab) gives the same
// perplexity, to a relative `tolerance`.
void expect_same_perplexity(const std::string& run, const std::string& first, const std::string& second,
                            double tolerance) {
  SCOPED_TRACE(run);
  std::vector<double> perplexities;
  for (const auto& command : {first, second}) {
    const auto r = run_shell(command + " --json --run " + sq(run) + " 2>&1");
    ASSERT_EQ(r.exit_code, 0) << command << "\n" << r.output;
    perplexities.push_back(parse_json_line(r.output)["ppl"].get<double>());
  }
  EXPECT_NEAR(perplexities[0], perplexities[1], tolerance * perplexities[0]);
}

class Cli : public ::testing::Test {
 protected:
  // One corpus and (trained on first use) one run shared by the tests of a process; tests that
  // change a run work on a copy. ctest runs each test in its own process, so the run is trained
  // only where a test needs it.
  static void SetUpTestSuite() {
    root_ = std::make_unique<TempDir>();
    corpus_ = root_->file("corpus");
    make_corpus(corpus_);
  }
  static void TearDownTestSuite() {
    root_.reset();
    base_run_.clear();
  }

  // The shared tiny run's directory; fails the test when training it failed.
  static const std::string& base_run() {
    if (base_run_.empty()) {
      base_run_ = root_->file("base_run");
      base_result_ = run_moelab("train " + tiny_flags(corpus_) + " --out " + sq(base_run_));
    }
    EXPECT_EQ(base_result_.exit_code, 0) << "the shared tiny training run failed:\n" << base_result_.output;
    return base_run_;
  }

  // Each (extra train flags, expected message) is refused with that one-line error before any
  // checkpoint is written.
  static void expect_tiny_train_refused(const std::vector<std::pair<std::string, std::string>>& cases) {
    TempDir dir;
    for (const auto& [flags, needle] : cases) {
      SCOPED_TRACE(flags);
      expect_one_line_error(run_moelab("train " + tiny_flags(corpus_) + " " + flags + " --out " + sq(dir.file("run"))),
                            needle);
      EXPECT_FALSE(fs::exists(dir.file("run/checkpoint.pt")));
    }
  }

  // A copy of the shared run at dir.
  static void copy_base_run(const std::string& dir) { fs::copy(base_run(), dir, fs::copy_options::recursive); }

  static std::unique_ptr<TempDir> root_;
  static std::string corpus_;
  static std::string base_run_;
  static CommandResult base_result_;
};

std::unique_ptr<TempDir> Cli::root_;
std::string Cli::corpus_;
std::string Cli::base_run_;
CommandResult Cli::base_result_;

// ---------------------------------------------------------------------------------------------
// Positive smoke tests on the shared run.

TEST_F(Cli, TrainWritesConfigMetricsAndSummary) {
  const std::string base = base_run();
  ASSERT_FALSE(HasFailure());
  // The printed summary.
  EXPECT_NE(base_result_.output.find("valid ppl"), std::string::npos) << base_result_.output;

  ASSERT_TRUE(fs::is_regular_file(base + "/config.toml"));
  ASSERT_TRUE(fs::is_regular_file(base + "/checkpoint.pt"));
  const std::string config = read_file(base + "/config.toml");
  EXPECT_NE(config.find("hidden = 16"), std::string::npos) << config;
  EXPECT_NE(config.find("[moe]"), std::string::npos) << config;

  const auto metric_lines = lines_of(read_file(base + "/metrics.jsonl"));
  ASSERT_FALSE(metric_lines.empty());
  bool saw_final = false;
  for (const auto& line : metric_lines) {
    nlohmann::json record;
    ASSERT_NO_THROW(record = nlohmann::json::parse(line)) << line;
    ASSERT_TRUE(record.is_object()) << line;
    ASSERT_TRUE(record.contains("step")) << line;
    if (record.contains("test_ppl")) saw_final = true;
  }
  EXPECT_TRUE(saw_final) << "no final valid/test record in metrics.jsonl";

  nlohmann::json summary;
  ASSERT_NO_THROW(summary = nlohmann::json::parse(read_file(base + "/summary.json")));
  for (const char* key : {"valid_ppl", "test_ppl", "params_total", "params_active_per_token", "flops_per_token",
                          "tokens_per_s", "peak_rss_mb", "train_seconds", "moe_layers"})
    EXPECT_TRUE(summary.contains(key)) << "summary.json lacks " << key;
  EXPECT_TRUE(std::isfinite(summary["valid_ppl"].get<double>()));
  EXPECT_GT(summary["valid_ppl"].get<double>(), 1.0);
  EXPECT_TRUE(std::isfinite(summary["test_ppl"].get<double>()));
  EXPECT_GT(summary["params_total"].get<int64_t>(), summary["params_active_per_token"].get<int64_t>())
      << "4 experts, k = 2: some parameters are inactive per token";
  EXPECT_GT(summary["flops_per_token"].get<int64_t>(), 0);
  EXPECT_GT(summary["tokens_per_s"].get<double>(), 0);
  EXPECT_GT(summary["peak_rss_mb"].get<double>(), 0);
  // The build that trained it (the test and moelab are built from the same checkout).
  EXPECT_EQ(summary.value("moelab_commit", ""), std::string(moelab::build_commit()));
  EXPECT_EQ(summary.value("cpu", ""), moelab::cpu_description());  // speed figures name their machine
  // The grouped-product kernels the run used, so that it can be repeated to the bit.
  EXPECT_EQ(summary.value("grouped_path", ""), "auto");
  ASSERT_TRUE(summary.contains("grouped_paths_used") && !summary["grouped_paths_used"].empty()) << summary.dump();
  for (const auto& used : summary["grouped_paths_used"])
    EXPECT_NO_THROW(moelab::parse_grouped_path(used["path"].get<std::string>())) << used.dump();
  EXPECT_GT(summary["train_seconds"].get<double>(), 0);

  ASSERT_TRUE(summary["moe_layers"].is_array());
  ASSERT_EQ(summary["moe_layers"].size(), 1u);
  const auto& layer = summary["moe_layers"][0];
  for (const char* key : {"expert_load", "load_cv", "importance_cv", "max_mean_load", "dropped_frac"})
    EXPECT_TRUE(layer.contains(key)) << "moe layer lacks " << key;
  ASSERT_TRUE(layer["expert_load"].is_array());
  EXPECT_EQ(layer["expert_load"].size(), 4u);
  double load_sum = 0;
  for (const auto& v : layer["expert_load"]) load_sum += v.get<double>();
  EXPECT_NEAR(load_sum, 1.0, 1e-4);
  EXPECT_GE(layer["load_cv"].get<double>(), 0);
  EXPECT_GE(layer["importance_cv"].get<double>(), 0);
  EXPECT_GE(layer["max_mean_load"].get<double>(), 1.0 - 1e-9);
  EXPECT_DOUBLE_EQ(layer["dropped_frac"].get<double>(), 0.0) << "capacity_factor 0 is dropless";
}

// Issue 20 item 4: under train.grouped_path = auto, two processes started together with one seed
// agree to the bit (one measures each shape, the other waits on the cache's lock and uses the saved
// choice), and a later one takes every choice from the cache.
TEST_F(Cli, AutoGroupedPathsRepeatBitForBitAcrossProcesses) {
  TempDir dir;
  const std::string flags = tiny_flags(corpus_) + " --set moe.experts=8 --set train.grouped_path=auto" +
                            " --set train.grouped_path_cache=" + sq(dir.file("cache/paths.json"));
  const auto train = [&](const std::string& name) {
    return sq(moelab_executable()) + " train " + flags + " --out " + sq(dir.file(name)) + " >" +
           sq(dir.file(name + ".log")) + " 2>&1";
  };
  const auto together = run_shell(train("a") + " & " + train("b") + " & wait %1 && wait %2 && echo both ok");
  ASSERT_NE(together.output.find("both ok"), std::string::npos)
      << read_file(dir.file("a.log")) << read_file(dir.file("b.log"));
  const auto later = run_shell(train("c"));
  ASSERT_EQ(later.exit_code, 0) << read_file(dir.file("c.log"));

  const auto losses = [&](const std::string& run) { return moelab::testing::training_losses(dir.file(run)); };
  ASSERT_FALSE(losses("a").empty());
  EXPECT_EQ(losses("a"), losses("b"));  // exact, not near
  EXPECT_EQ(losses("a"), losses("c"));

  // Per shape class: measured by exactly one of the two concurrent processes, saved for the other,
  // and saved for the later one.
  using Sources = std::map<std::string, std::multiset<std::string>>;  // shape -> sources seen
  const auto add_sources = [&](const std::string& run, Sources& sources) {
    const auto summary = nlohmann::json::parse(read_file(dir.file(run + "/summary.json")));
    ASSERT_FALSE(summary["grouped_paths_used"].empty()) << summary.dump();
    for (const auto& used : summary["grouped_paths_used"]) {
      const auto shape = fmt::format("E={} I={} O={} rows={} {} path={}", used["experts"].get<int64_t>(),
                                     used["in_width"].get<int64_t>(), used["out_width"].get<int64_t>(),
                                     used["rows_per_expert"].get<int64_t>(), used["product"].get<std::string>(),
                                     used["path"].get<std::string>());
      sources[shape].insert(used["source"].get<std::string>());
    }
  };
  Sources together_sources, later_sources;
  add_sources("a", together_sources);
  add_sources("b", together_sources);
  add_sources("c", later_sources);
  for (const auto& [shape, seen] : together_sources)
    EXPECT_EQ(seen, (std::multiset<std::string>{"measured", "saved"})) << shape;
  EXPECT_EQ(later_sources.size(), together_sources.size());
  for (const auto& [shape, seen] : later_sources) EXPECT_EQ(seen, (std::multiset<std::string>{"saved"})) << shape;
  const auto cache = nlohmann::json::parse(read_file(dir.file("cache/paths.json")));
  EXPECT_EQ(cache["version"], 1);
  EXPECT_EQ(cache["machines"].size(), 1u) << cache.dump();

  // The runs' evaluations in fresh processes take the saved paths too.
  const auto eval_a = run_moelab("eval --json --run " + sq(dir.file("a")));
  const auto eval_b = run_moelab("eval --json --run " + sq(dir.file("b")));
  ASSERT_EQ(eval_a.exit_code, 0) << eval_a.output;
  EXPECT_EQ(parse_json_line(eval_a.output)["ppl"].get<double>(), parse_json_line(eval_b.output)["ppl"].get<double>());
}

TEST_F(Cli, EvalMatchesSummaryValidPerplexity) {
  const std::string base = base_run();
  ASSERT_FALSE(HasFailure());
  const auto summary = nlohmann::json::parse(read_file(base + "/summary.json"));
  const double expected = summary["valid_ppl"].get<double>();

  const auto text = run_moelab("eval --run " + sq(base));
  ASSERT_EQ(text.exit_code, 0) << text.output;
  EXPECT_NE(text.output.find("valid perplexity "), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("step 6"), std::string::npos) << text.output;

  const auto json = run_moelab("eval --run " + sq(base) + " --json");
  ASSERT_EQ(json.exit_code, 0) << json.output;
  nlohmann::json result;
  ASSERT_NO_THROW(result = parse_json_line(json.output)) << json.output;
  const double ppl = result["ppl"].get<double>();
  EXPECT_TRUE(std::isfinite(ppl)) << json.output;
  EXPECT_NEAR(ppl, expected, 1e-3 * expected) << json.output;
  EXPECT_EQ(result["step"].get<int64_t>(), 6);
  EXPECT_TRUE(result.contains("moe")) << json.output;
}

TEST_F(Cli, GeneratePrintsText) {
  const std::string base = base_run();
  ASSERT_FALSE(HasFailure());
  const auto r = run_moelab("generate --run " + sq(base) + " --prompt 'a b' --tokens 5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("a b", 0), 0u) << "the output continues the prompt:\n" << r.output;
  EXPECT_GT(r.output.size(), std::string("a b\n").size()) << r.output;
}

TEST_F(Cli, TransformerRunTrainsEvaluatesGeneratesAndReportsItsBlocks) {
  TempDir dir;
  const std::string run = dir.file("transformer");
  const auto trained = run_moelab("train " + tiny_flags(corpus_) +
                                  " --set model.arch=transformer --set model.hidden=16 --set model.heads=2"
                                  " --set model.layers=2 --set model.context=6 --set moe.every=2"
                                  " --set train.optimizer=adamw --set train.lr=0.003 --out " + sq(run));
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  const auto generated = run_moelab("generate --run " + sq(run) + " --prompt 'a b' --tokens 9");  // past the context
  ASSERT_EQ(generated.exit_code, 0) << generated.output;
  EXPECT_EQ(generated.output.rfind("a b", 0), 0u) << generated.output;
  const auto info = run_moelab("info --run " + sq(run) + " --json");
  ASSERT_EQ(info.exit_code, 0) << info.output;
  const auto costs = nlohmann::json::parse(info.output);
  ASSERT_EQ(costs["moe_layers"].size(), 1u);
  EXPECT_EQ(costs["moe_layers"][0]["name"], "blocks.1.moe");
  const auto eval = run_moelab("eval --run " + sq(run) + " --json");
  ASSERT_EQ(eval.exit_code, 0) << eval.output;
  EXPECT_EQ(parse_json_line(eval.output)["moe_layers"].size(), 1u);
}

TEST_F(Cli, InfoRunPrintsCostTable) {
  const std::string base = base_run();
  ASSERT_FALSE(HasFailure());
  const auto r = run_moelab("info --run " + sq(base));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("total"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("FLOPs/token"), std::string::npos) << r.output;
}

TEST_F(Cli, RoutesPrintsPerExpertTableAndWritesCsv) {
  const std::string base = base_run();
  ASSERT_FALSE(HasFailure());
  TempDir dir;
  const auto r = run_moelab("routes --run " + sq(base) + " --csv " + sq(dir.file("routes.csv")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("load CV"), std::string::npos) << r.output;
  const auto csv = lines_of(moelab::testing::read_file(dir.file("routes.csv")));
  ASSERT_EQ(csv.size(), 5u) << "header + 4 experts";
  EXPECT_EQ(csv[0], "expert,assigned,fraction,importance");
  double fractions = 0;
  for (size_t i = 1; i < csv.size(); ++i) {
    const auto first = csv[i].find(','), second = csv[i].find(',', first + 1);
    fractions += std::stod(csv[i].substr(second + 1, csv[i].find(',', second + 1) - second - 1));
  }
  EXPECT_NEAR(fractions, 1.0, 1e-4);

  // What each expert specialises in: the token x expert counts add up to the same slots (k = 2 per
  // occurrence at most), and the token listed first for the busiest expert has the largest share of
  // its occurrences routed there (a six-step model may leave some experts without any token).
  const auto top = run_moelab("routes --run " + sq(base) + " --top-tokens 3 --min-count 1 --csv " +
                              sq(dir.file("routes-top.csv")));
  ASSERT_EQ(top.exit_code, 0) << top.output;
  // Slots from the same process as the token table. The first process may have timed and taken
  // another grouped-product path, and a six-step model's nearly tied router logits can then send a
  // token elsewhere (the test failed once in a full ctest -j2 and never alone).
  double assigned = 0;
  const auto top_csv = lines_of(moelab::testing::read_file(dir.file("routes-top.csv")));
  for (size_t i = 1; i < top_csv.size(); ++i) {
    const auto first = top_csv[i].find(',');
    assigned += std::stod(top_csv[i].substr(first + 1, top_csv[i].find(',', first + 1) - first - 1));
  }
  ASSERT_NE(top.output.find("what each expert receives most"), std::string::npos) << top.output;
  const auto table = lines_of(moelab::testing::read_file(base + "/routes-tokens-valid.csv"));
  ASSERT_GT(table.size(), 2u);
  EXPECT_EQ(table[0], "token,occurrences,expert_0,expert_1,expert_2,expert_3");
  std::vector<std::vector<std::string>> rows;
  for (size_t i = 1; i < table.size(); ++i) {
    std::vector<std::string> cells;
    std::stringstream row(table[i]);
    for (std::string cell; std::getline(row, cell, ',');) cells.push_back(cell);
    ASSERT_EQ(cells.size(), 6u) << table[i];
    rows.push_back(cells);
  }
  double slots = 0;
  std::vector<double> expert_slots(4, 0.0);
  for (const auto& cells : rows) {
    const double total = std::stod(cells[1]);
    double sum = 0;
    for (size_t e = 0; e < 4; ++e) sum += std::stod(cells[2 + e]), expert_slots[e] += std::stod(cells[2 + e]);
    EXPECT_LE(sum, 2 * total) << cells[0];
    EXPECT_GT(sum, 0) << cells[0];
    slots += sum;
  }
  EXPECT_EQ(slots, assigned);
  const size_t busiest =
      static_cast<size_t>(std::max_element(expert_slots.begin(), expert_slots.end()) - expert_slots.begin());
  double best_share = 0;
  std::map<std::string, double> share_of_busiest;
  for (const auto& cells : rows) {
    share_of_busiest[cells[0]] = std::stod(cells[2 + busiest]) / std::stod(cells[1]);
    best_share = std::max(best_share, share_of_busiest[cells[0]]);
  }
  const auto line_start =
      top.output.find("\n     " + std::to_string(busiest) + "  ", top.output.find("what each expert receives most"));
  ASSERT_NE(line_start, std::string::npos) << top.output;
  const auto token_start = line_start + 9;  // "\n" + "     0" + "  "
  const std::string first_token = top.output.substr(token_start, top.output.find(" (", token_start) - token_start);
  ASSERT_TRUE(share_of_busiest.count(first_token)) << first_token << "\n" << top.output;
  EXPECT_NEAR(share_of_busiest[first_token], best_share, 1e-9) << top.output;
}

TEST_F(Cli, EvalTakesEvaluationSettingsOnly) {
  const std::string base = base_run();
  ASSERT_FALSE(HasFailure());
  auto dropped = [&](const std::string& settings) {
    const auto r = run_moelab("eval --json --run " + sq(base) + settings);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return parse_json_line(r.output)["moe"]["dropped_frac"].get<double>();
  };
  EXPECT_EQ(dropped(""), 0.0);  // trained dropless
  EXPECT_GT(dropped(" --set moe.eval_capacity_factor=0.25"), 0.0);
  // Spaces around '=' are one assignment to train and to eval alike, not an unknown key here.
  EXPECT_EQ(dropped(" --set 'moe.eval_capacity_factor = 0.25'"), dropped(" --set moe.eval_capacity_factor=0.25"));
  const auto refused = run_moelab("eval --run " + sq(base) + " --set moe.experts=8");
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("only settings that change evaluation"), std::string::npos) << refused.output;
}

TEST_F(Cli, EvalScoresATaggingRunFromItsBestOrLastCheckpoint) {
  TempDir dir;
  std::string conll;
  for (int s = 0; s < 12; ++s)
    conll += std::string(s % 2 ? "alice B-PER\nmet O\nbob B-PER\n\n" : "the O\nacme B-ORG\nsaid O\n\n");
  write_file(dir.file("train.conll"), conll);
  write_file(dir.file("valid.conll"), conll);
  const std::string run = dir.file("tagger");
  const auto trained = run_moelab(
      "train --quiet --set model.task=tagging --set data.train=" + sq(dir.file("train.conll")) +
      " --set data.valid=" + sq(dir.file("valid.conll")) +
      " --set model.embed=8 --set model.hidden=8 --set moe.experts=2 --set moe.k=1 --set moe.router=topk_mask"
      " --set moe.expert_hidden=8 --set moe.balance.load=0 --set train.batch=4 --set train.steps=4"
      " --set train.eval_every=2 --set train.checkpoint_every=2 --set train.threads=1 --set train.warmup=0 --out " +
      sq(run));
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  const auto summary = nlohmann::json::parse(read_file(run + "/summary.json"));

  const auto last = run_moelab("eval --json --checkpoint last --run " + sq(run));
  ASSERT_EQ(last.exit_code, 0) << last.output;
  const auto figures = parse_json_line(last.output);
  EXPECT_EQ(figures["step"].get<int64_t>(), 4);
  EXPECT_NEAR(figures["valid_entity_f1"].get<double>(), summary["valid_entity_f1"].get<double>(), 1e-9);
  const auto text = run_moelab("eval --run " + sq(run));
  ASSERT_EQ(text.exit_code, 0) << text.output;
  EXPECT_NE(text.output.find("best.pt"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("  valid_entity_f1 "), std::string::npos) << text.output;
  const auto other_file = run_moelab("eval --json --split test --data " + sq(dir.file("valid.conll")) + " --run " + sq(run));
  ASSERT_EQ(other_file.exit_code, 0) << other_file.output;
  EXPECT_TRUE(parse_json_line(other_file.output).contains("test_entity_f1")) << other_file.output;

  expect_one_line_error(run_moelab("eval --split test --run " + sq(run)), "trained without data.test; name a file with --data");
  expect_one_line_error(run_moelab("eval --max-tokens 5 --run " + sq(run)), "--max-tokens applies to language-model runs");
  expect_one_line_error(run_moelab("eval --checkpoint last --run " + sq(base_run())), "--checkpoint applies to tagging and QA runs");
}

TEST_F(Cli, RouterBadInput) {
  expect_tiny_train_refused({
      {"--set moe.router=top3", "moe.router must be one of softmax, topk, topk_mask, noisy_topk, switch"},
      {"--set moe.router=expert_choice --set moe.balance.load=0", "router 'expert_choice' needs moe.capacity_factor > 0"},
      {"--set moe.router=hierarchical --set moe.groups=3", "moe.groups = 3 does not divide moe.experts = 4"},
      {"--set moe.router=topk_mask", "moe.balance.load = 0.1 needs noisy gates"},
  });
}

TEST_F(Cli, UpcycleDenseRunToMpoThenTrainIt) {
  TempDir dir;
  const std::string dense = dir.file("dense"), moe = dir.file("moe");
  // Dense FFN of width k * expert_hidden = 2 * 16 = 32 on a 16-wide model.
  const auto trained =
      run_moelab("train " + tiny_flags(corpus_) + " --set moe.layer=dense --out " + sq(dense));
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  const auto r = run_moelab("upcycle --from " + sq(dense) + " --experts 4 --bank mpo --bond 4" +
                            " --set moe.model_factors=2,4,2 --set moe.hidden_factors=2,8,2 --json --out " + sq(moe));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto report = parse_json_line(r.output);
  EXPECT_EQ(report["bank"], "mpo");
  EXPECT_GT(report["reconstruction"]["w_in"]["relative_error"].get<double>(), 0.0);
  EXPECT_GT(report["valid_ppl_source"].get<double>(), 1.0);
  EXPECT_GT(report["valid_ppl_upcycled"].get<double>(), 1.0);
  for (const char* file : {"config.toml", "vocab.txt", "checkpoint.pt", "upcycle.json"})
    EXPECT_TRUE(fs::exists(moe + "/" + file)) << file;
  // The upcycled run is a run at step 0 that train --resume continues with its own config.
  const auto resumed = run_moelab("train --quiet --out " + sq(moe) + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  const auto summary = nlohmann::json::parse(read_file(moe + "/summary.json"));
  EXPECT_EQ(summary["steps"].get<int64_t>(), 6);
  EXPECT_EQ(summary["moe_layers"][0]["bank"], "mpo");
  // A second upcycle into the same directory is refused and leaves the run as it was.
  const auto before = snapshot(moe);
  expect_one_line_error(run_moelab("upcycle --from " + sq(dense) + " --experts 4 --out " + sq(moe)),
                        "already holds a run");
  expect_same_files(before, moe);
}

TEST_F(Cli, BankBadInput) {
  expect_tiny_train_refused({
      {"--set moe.bank=mpo", "moe.model_factors is empty"},
      {"--set moe.bank=mpo --set moe.model_factors=4,4 --set moe.hidden_factors=4,4", "odd number of cores"},
      {"--set moe.bank=tensor_train --set moe.model_factors=4,3 --set moe.hidden_factors=4,4", "multiplies to 12, not 16"},
      {"--set moe.bank=low_rank --set moe.rank=0", "moe.rank must be in"},
  });
}

TEST_F(Cli, UpcycleRefusesARunWithoutDenseFfn) {
  TempDir dir;
  expect_one_line_error(run_moelab("upcycle --from " + sq(base_run()) + " --experts 4 --out " + sq(dir.file("x"))),
                        "upcycling needs a model whose middle layer is a dense FFN");
  expect_one_line_error(run_moelab("upcycle --from " + sq(dir.file("none")) + " --experts 4 --out " +
                                   sq(dir.file("x"))),
                        "does not exist");
}

TEST_F(Cli, InfoSystemPrintsLibTorch) {
  const auto r = run_moelab("info --system");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("LibTorch"), std::string::npos) << r.output;
}

TEST_F(Cli, ListKeysListsMoeK) {
  const auto r = run_moelab("train --list-keys");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  bool found = false;
  for (const auto& line : lines_of(r.output))
    if (line.rfind("moe.k ", 0) == 0) found = true;
  EXPECT_TRUE(found) << r.output;
}

// ---------------------------------------------------------------------------------------------
// Bad data.

TEST_F(Cli, MissingCorpusDirectory) {
  TempDir dir;
  const std::string missing = dir.file("no-such-corpus");
  const auto r = run_moelab("train " + tiny_flags(missing) + " --out " + sq(dir.file("run")));
  expect_one_line_error(r, "corpus directory " + missing + " does not exist");
}

TEST_F(Cli, MissingTrainTxt) {
  TempDir dir;
  make_corpus(dir.file("corpus"));
  fs::remove(dir.file("corpus/train.txt"));
  const auto r = run_moelab("train " + tiny_flags(dir.file("corpus")) + " --out " + sq(dir.file("run")));
  expect_one_line_error(r, "train.txt is missing");
}

TEST_F(Cli, EmptyValidTxt) {
  TempDir dir;
  make_corpus(dir.file("corpus"));
  write_file(dir.file("corpus/valid.txt"), "\n\n  \n");
  const auto r = run_moelab("train " + tiny_flags(dir.file("corpus")) + " --out " + sq(dir.file("run")));
  expect_one_line_error(r, "valid.txt is empty");
}

TEST_F(Cli, CorpusSmallerThanOneBatch) {
  TempDir dir;
  const auto r = run_moelab("train " + tiny_flags(corpus_) + " --set train.batch=1000 --out " +
                            sq(dir.file("run")));
  expect_one_line_error(r, "fewer than one batch");
}

TEST_F(Cli, DataKjvWithoutBibleProgram) {
  TempDir dir;
  const auto r = run_shell("MOELAB_BIBLE=/nonexistent/bible '" + moelab_executable() + "' data kjv --out " +
                           sq(dir.file("kjv")) + " </dev/null");
  expect_one_line_error(r, "bible-kjv");
  EXPECT_FALSE(fs::exists(dir.file("kjv/train.txt")));
}

TEST_F(Cli, TrainOnKjvWithoutBibleProgram) {
  // data.corpus = kjv exports into MOELAB_DATA_DIR: point it at an empty directory, so the real
  // corpus in the user's cache is never used.
  TempDir dir;
  std::string flags = tiny_flags("kjv");
  const auto r = run_shell("MOELAB_BIBLE=/nonexistent/bible MOELAB_DATA_DIR=" + sq(dir.file("data")) + " '" +
                           moelab_executable() + "' train " + flags + " --out " + sq(dir.file("run")) +
                           " </dev/null");
  expect_one_line_error(r, "bible-kjv");
}

// ---------------------------------------------------------------------------------------------
// Bad configuration.

TEST_F(Cli, UnknownKeyInTomlFile) {
  TempDir dir;
  write_file(dir.file("bad.toml"), "[moe]\nexperts = 4\nkk = 3\n");
  const auto r = run_moelab("train --config " + sq(dir.file("bad.toml")) + " " + tiny_flags(corpus_) +
                            " --out " + sq(dir.file("run")));
  expect_one_line_error(r, "unknown config key 'moe.kk'");
  EXPECT_NE(r.output.find("bad.toml"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir.file("run"))) << "a refused config must not create the run directory";
}

TEST_F(Cli, UnknownKeyViaSet) {
  TempDir dir;
  const auto r = run_moelab("train " + tiny_flags(corpus_) + " --set moe.kk=3 --out " + sq(dir.file("run")));
  expect_one_line_error(r, "unknown config key 'moe.kk'");
  EXPECT_NE(r.output.find("--set"), std::string::npos) << r.output;
}

TEST_F(Cli, WrongTypeInTomlFile) {
  TempDir dir;
  write_file(dir.file("bad.toml"), "[moe]\nk = \"two\"\n");
  const auto r = run_moelab("train --config " + sq(dir.file("bad.toml")) + " --quiet --out " +
                            sq(dir.file("run")));
  expect_one_line_error(r, "'moe.k'");
  EXPECT_NE(r.output.find("must be an integer"), std::string::npos) << r.output;
}

TEST_F(Cli, WrongTypeViaSet) {
  TempDir dir;
  const auto r = run_moelab("train " + tiny_flags(corpus_) + " --set moe.k=abc --out " + sq(dir.file("run")));
  expect_one_line_error(r, "moe.k");
  EXPECT_NE(r.output.find("'abc' is not an integer"), std::string::npos) << r.output;
}

TEST_F(Cli, TomlSyntaxError) {
  TempDir dir;
  write_file(dir.file("bad.toml"), "[moe\nk = 2\n");
  const auto r = run_moelab("train --config " + sq(dir.file("bad.toml")) + " --quiet --out " +
                            sq(dir.file("run")));
  expect_one_line_error(r, "cannot parse");
}

TEST_F(Cli, MissingConfigFile) {
  TempDir dir;
  const auto r = run_moelab("train --config " + sq(dir.file("none.toml")) + " --quiet --out " +
                            sq(dir.file("run")));
  expect_one_line_error(r, "cannot read config file");
}

TEST_F(Cli, KGreaterThanExperts) {
  TempDir dir;
  const auto r = run_moelab("train " + tiny_flags(corpus_) + " --set moe.k=5 --out " + sq(dir.file("run")));
  expect_one_line_error(r, "moe.k = 5 exceeds moe.experts = 4");
}

TEST_F(Cli, KBelowOne) {
  TempDir dir;
  const auto r = run_moelab("train " + tiny_flags(corpus_) + " --set moe.k=0 --out " + sq(dir.file("run")));
  expect_one_line_error(r, "moe.k must be >= 1, got 0");
}

TEST_F(Cli, NegativeExperts) {
  TempDir dir;
  const auto r =
      run_moelab("train " + tiny_flags(corpus_) + " --set moe.experts=-1 --out " + sq(dir.file("run")));
  expect_one_line_error(r, "moe.experts must be >= 0");
}

TEST_F(Cli, NonPositiveBptt) {
  TempDir dir;
  for (const char* value : {"0", "-3"}) {
    const auto r = run_moelab("train " + tiny_flags(corpus_) + " --set train.bptt=" + value + " --out " +
                              sq(dir.file("run")));
    expect_one_line_error(r, std::string("train.bptt must be > 0, got ") + value);
  }
}

TEST_F(Cli, NonPositiveBatch) {
  TempDir dir;
  for (const char* value : {"0", "-2"}) {
    const auto r = run_moelab("train " + tiny_flags(corpus_) + " --set train.batch=" + value + " --out " +
                              sq(dir.file("run")));
    expect_one_line_error(r, std::string("train.batch must be > 0, got ") + value);
  }
}

// ---------------------------------------------------------------------------------------------
// Runs: missing, damaged, mismatched.

TEST_F(Cli, EvalGenerateInfoOnDirectoryWithoutRun) {
  TempDir dir;
  const std::string empty = dir.path();
  expect_one_line_error(run_moelab("eval --run " + sq(empty)), "holds no checkpoint");
  expect_one_line_error(run_moelab("generate --run " + sq(empty) + " --prompt 'a b' --tokens 5"),
                        "holds no checkpoint");
  expect_one_line_error(run_moelab("info --run " + sq(empty)), "holds no checkpoint");

  const std::string missing = dir.file("no-such-run");
  expect_one_line_error(run_moelab("eval --run " + sq(missing)), "run directory " + missing + " does not exist");
  expect_one_line_error(run_moelab("generate --run " + sq(missing)), "does not exist");
  expect_one_line_error(run_moelab("info --run " + sq(missing)), "does not exist");
}

TEST_F(Cli, TruncatedCheckpoint) {
  TempDir dir;
  const std::string run = dir.file("run");
  copy_base_run(run);
  const std::string checkpoint = run + "/checkpoint.pt";
  const auto size = fs::file_size(checkpoint);
  ASSERT_GT(size, 100u);
  fs::resize_file(checkpoint, size / 2);
  // With the previous checkpoint beside it, every command reads that one and says so in one line.
  ASSERT_TRUE(fs::exists(checkpoint + ".prev"));
  const auto fallback = run_moelab("eval --run " + sq(run));
  ASSERT_EQ(fallback.exit_code, 0) << fallback.output;
  EXPECT_NE(fallback.output.find("moelab: warning: checkpoint " + checkpoint + " is unreadable or truncated"),
            std::string::npos)
      << fallback.output;
  EXPECT_NE(fallback.output.find("using the previous checkpoint " + checkpoint + ".prev (step"), std::string::npos)
      << fallback.output;

  // Without it, a one-line error and nothing touched.
  fs::remove(checkpoint + ".prev");
  const auto before = snapshot(run);
  expect_one_line_error(run_moelab("eval --run " + sq(run)), "checkpoint.pt is unreadable or truncated");
  expect_one_line_error(run_moelab("generate --run " + sq(run) + " --prompt a --tokens 3"),
                        "checkpoint.pt is unreadable or truncated");
  expect_one_line_error(run_moelab("info --run " + sq(run)), "checkpoint.pt is unreadable or truncated");
  expect_one_line_error(run_moelab("train --resume --quiet --out " + sq(run)),
                        "checkpoint.pt is unreadable or truncated");
  expect_same_files(before, run);
}

TEST_F(Cli, GarbageCheckpoint) {
  TempDir dir;
  const std::string run = dir.file("run");
  copy_base_run(run);
  write_file(run + "/checkpoint.pt", "this is not a checkpoint\n");
  fs::remove(run + "/checkpoint.pt.prev");
  expect_one_line_error(run_moelab("eval --run " + sq(run)), "checkpoint.pt is unreadable or truncated");
}

TEST_F(Cli, ResumeWithDifferentConfigIsRefused) {
  TempDir dir;
  const std::string run = dir.file("run");
  copy_base_run(run);
  const auto before = snapshot(run);
  // Without --config, --resume starts from the run's own config.toml; the override changes it.
  const auto r = run_moelab("train --resume --quiet --set model.hidden=32 --out " + sq(run));
  expect_one_line_error(r, "differs in model.hidden (16 vs 32)");
  expect_same_files(before, run);

  // Same with every flag given again and one of them changed.
  const auto r2 = run_moelab("train --resume " + tiny_flags(corpus_) + " --set moe.k=3 --out " + sq(run));
  expect_one_line_error(r2, "differs in moe.k (2 vs 3)");
  expect_same_files(before, run);
}

TEST_F(Cli, OutHoldingAnotherRunNeedsForce) {
  TempDir dir;
  const std::string run = dir.file("run");
  copy_base_run(run);
  const auto before = snapshot(run);

  const auto refused =
      run_moelab("train " + tiny_flags(corpus_) + " --set model.hidden=24 --out " + sq(run));
  expect_one_line_error(refused, "already holds a run");
  EXPECT_NE(refused.output.find("--force"), std::string::npos) << refused.output;
  expect_same_files(before, run);

  const auto forced =
      run_moelab("train " + tiny_flags(corpus_) + " --set model.hidden=24 --force --out " + sq(run));
  ASSERT_EQ(forced.exit_code, 0) << forced.output;
  EXPECT_NE(read_file(run + "/config.toml").find("hidden = 24"), std::string::npos);
  EXPECT_NE(read_file(run + "/checkpoint.pt"), read_file(base_run() + "/checkpoint.pt"));
  EXPECT_TRUE(fs::is_regular_file(run + "/summary.json"));
  // metrics.jsonl holds only the new run: one final record, not two.
  int finals = 0;
  for (const auto& line : lines_of(read_file(run + "/metrics.jsonl")))
    if (nlohmann::json::parse(line).contains("test_ppl")) ++finals;
  EXPECT_EQ(finals, 1);
  const auto eval = run_moelab("eval --run " + sq(run));
  EXPECT_EQ(eval.exit_code, 0) << eval.output;
}

TEST_F(Cli, ForcedReplacementThatFailsKeepsTheOldRun) {
  // --force with a corpus that cannot be loaded: the replacement never starts, so the run that
  // was there must still be complete.
  TempDir dir;
  const std::string run = dir.file("run");
  copy_base_run(run);
  const auto before = snapshot(run);
  const auto r = run_moelab("train " + tiny_flags(dir.file("no-such-corpus")) + " --force --out " + sq(run));
  expect_one_line_error(r, "does not exist");
  expect_same_files(before, run);
}

TEST_F(Cli, NanLossKeepsLastGoodCheckpoint) {
  TempDir dir;
  const std::string run = dir.file("run");
  const auto r = run_moelab("train " + tiny_flags(corpus_) + " --set debug.nan_at_step=5 --out " + sq(run));
  expect_one_line_error(r, "at step 5");
  EXPECT_NE(r.output.find("NaN"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("checkpoint (step 3) kept"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(run + "/summary.json")) << "no summary for a run that did not finish";

  const auto eval = run_moelab("eval --run " + sq(run) + " --json");
  ASSERT_EQ(eval.exit_code, 0) << eval.output;
  const auto result = parse_json_line(eval.output);
  EXPECT_EQ(result["step"].get<int64_t>(), 3);
  EXPECT_TRUE(std::isfinite(result["ppl"].get<double>())) << eval.output;

  // The kept checkpoint resumes: debug.nan_at_step is not an experiment key, so it may change.
  const auto resumed = run_moelab("train --resume --quiet --set debug.nan_at_step=0 --out " + sq(run));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  const auto summary = nlohmann::json::parse(read_file(run + "/summary.json"));
  EXPECT_EQ(summary["steps"].get<int64_t>(), 6);
  EXPECT_EQ(summary["tokens_trained_this_session"].get<int64_t>(), 3 * 4 * 8) << "steps 4..6 only";
}

// SIGTERM (a batch system's preemption, `kill`, the end of a lease) or Ctrl-C: the step in
// progress finishes and is checkpointed although no checkpoint is due there, the process ends by
// the signal, and the resumed run is the run that was never stopped.
TEST_F(Cli, SigtermCheckpointsTheStepInProgressAndTheResumeMatchesAnUnstoppedRun) {
  TempDir dir;
  const std::string run = dir.file("run");
  // Checkpoints are due at steps 3 and 6; the signal arrives as step 4 starts.
  const std::string flags = tiny_flags(corpus_) + " --set train.log_every=1";
  const auto r = run_moelab("train " + flags + " --set debug.signal_at_step=4 --out " + sq(run));
  EXPECT_EQ(r.exit_code, 128 + SIGTERM) << r.output;
  EXPECT_NE(r.output.find("stopped by SIGTERM after step 4"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(run + "/summary.json"));
  const auto eval = run_moelab("eval --run " + sq(run) + " --json");
  ASSERT_EQ(eval.exit_code, 0) << eval.output;
  EXPECT_EQ(parse_json_line(eval.output)["step"].get<int64_t>(), 4);

  const auto resumed = run_moelab("train --resume --quiet --set debug.signal_at_step=0 --out " + sq(run));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  const auto summary = nlohmann::json::parse(read_file(run + "/summary.json"));
  EXPECT_EQ(summary["steps"].get<int64_t>(), 6);
  EXPECT_EQ(summary["tokens_trained_this_session"].get<int64_t>(), 2 * 4 * 8) << "steps 5 and 6 only";
  const std::string whole = dir.file("whole");
  const auto unstopped_run = run_moelab("train " + flags + " --out " + sq(whole));
  ASSERT_EQ(unstopped_run.exit_code, 0) << unstopped_run.output;
  const auto unstopped = nlohmann::json::parse(read_file(whole + "/summary.json"));
  EXPECT_NEAR(summary["valid_ppl"].get<double>(), unstopped["valid_ppl"].get<double>(), 1e-6);
  const auto losses = moelab::testing::training_losses(run);
  EXPECT_EQ(losses.size(), 6u);
  EXPECT_EQ(losses, moelab::testing::training_losses(whole));

  // Stopped during the last step: the final evaluation waits for the resume, which trains nothing.
  const std::string last = dir.file("last");
  const auto at_last = run_moelab("train " + flags + " --set debug.signal_at_step=6 --out " + sq(last));
  EXPECT_EQ(at_last.exit_code, 128 + SIGTERM) << at_last.output;
  EXPECT_NE(at_last.output.find("stopped by SIGTERM after step 6"), std::string::npos) << at_last.output;
  EXPECT_FALSE(fs::exists(last + "/summary.json"));
  const auto finished = run_moelab("train --resume --quiet --set debug.signal_at_step=0 --out " + sq(last));
  ASSERT_EQ(finished.exit_code, 0) << finished.output;
  const auto last_summary = nlohmann::json::parse(read_file(last + "/summary.json"));
  EXPECT_EQ(last_summary["steps"].get<int64_t>(), 6);
  EXPECT_EQ(last_summary["tokens_trained_this_session"].get<int64_t>(), 0);
  EXPECT_NEAR(last_summary["valid_ppl"].get<double>(), unstopped["valid_ppl"].get<double>(), 1e-6);
  EXPECT_EQ(moelab::testing::training_losses(last), moelab::testing::training_losses(whole));
}

TEST_F(Cli, NanLossBeforeAnyCheckpointClaimsNoCheckpoint) {
  // NaN at step 2, first checkpoint due at step 3: there is no good checkpoint, and the message
  // must not name one.
  TempDir dir;
  const std::string run = dir.file("run");
  const auto r = run_moelab("train " + tiny_flags(corpus_) + " --set debug.nan_at_step=2 --out " + sq(run));
  expect_one_line_error(r, "at step 2");
  EXPECT_FALSE(fs::exists(run + "/checkpoint.pt"));
  EXPECT_EQ(r.output.find("checkpoint (step 0) kept"), std::string::npos)
      << "the message claims a checkpoint that does not exist:\n" << r.output;
  EXPECT_NE(r.output.find("before the first checkpoint"), std::string::npos) << r.output;
}

TEST_F(Cli, DataStatsCountsTokensAndVocabulary) {
  TempDir dir;
  write_file(dir.file("train.txt"), "a b a\n\nc a\n");  // 5 words + 3 <eos>
  write_file(dir.file("valid.txt"), "a z\n");            // 2 words + 1 <eos>
  write_file(dir.file("test.txt"), "b\n");
  const auto r = run_moelab("data stats " + sq(dir.path()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // a b c <eos> <unk>
  EXPECT_NE(r.output.find("vocabulary 5; tokens (one <eos> per line): train 8, valid 3, test 2"), std::string::npos)
      << r.output;
}

TEST_F(Cli, DataSquadSplitWritesWholeArticlesOrSaysInOneLineWhyNot) {
  TempDir dir;
  nlohmann::json squad = {{"version", "1.1"}, {"data", nlohmann::json::array()}};
  for (int a = 0; a < 5; ++a)
    squad["data"].push_back({{"title", fmt::format("article{}", a)},
                             {"paragraphs", {{{"context", fmt::format("context {}", a)}, {"qas", nlohmann::json::array()}}}}});
  write_file(dir.file("dev.json"), squad.dump());
  const auto split = dir.file("split");
  const auto r = run_moelab("data squad-split --input " + sq(dir.file("dev.json")) +
                            " --train-articles 3 --valid-articles 1 --seed 2 --out " + sq(split));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("not the official SQuAD training set"), std::string::npos) << r.output;
  int64_t articles = 0;
  for (const char* name : {"train", "valid", "test"})
    articles += static_cast<int64_t>(nlohmann::json::parse(read_file(split + "/" + name + ".json"))["data"].size());
  EXPECT_EQ(articles, 5);
  write_file(dir.file("empty.json"), R"({"version": "1.1", "data": []})");
  expect_one_line_error(run_moelab("data squad-split --input " + sq(dir.file("empty.json")) +
                                   " --train-articles 1 --out " + sq(dir.file("x"))),
                        "no articles");
  expect_one_line_error(run_moelab("data squad-split --input " + sq(dir.file("dev.json")) +
                                   " --train-articles 5 --out " + sq(dir.file("y"))),
                        "leave no test article");
  write_file(dir.file("broken.json"), "{\"data\": [");
  expect_one_line_error(run_moelab("data squad-split --input " + sq(dir.file("broken.json")) +
                                   " --train-articles 1 --out " + sq(dir.file("z"))),
                        "not valid JSON");
  EXPECT_FALSE(fs::exists(dir.file("x")));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// bench and the BLAS set-up of every entry point.

TEST_F(Cli, BenchTransformerRowsGiveTheStepInFloat32AndBf16AgainstSgemmWithPeakMemory) {
  TempDir dir;
  write_file(dir.file("transformer.toml"),
             "[data]\ncorpus = \"" + corpus_ + "\"\n[model]\narch = \"transformer\"\nhidden = 16\nheads = 2\nlayers = 2\n"
             "context = 8\nffn_hidden = 32\nsoftmax = \"full\"\n[moe]\nexperts = 4\nk = 2\nexpert_hidden = 16\nevery = 2\n"
             "[train]\nbatch = 4\noptimizer = \"adamw\"\n");
  const std::string json = dir.file("bench.json");
  const auto r = run_moelab("bench --quick --only transformer --samples 1 --warmup 0 --threads 1 --transformer-config " +
                            sq(dir.file("transformer.toml")) + " --json " + sq(json));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* table : {"### transformer_train_step", "### transformer_eval"})
    EXPECT_NE(r.output.find(table), std::string::npos) << table << "\n" << r.output;
  const auto rows = nlohmann::json::parse(read_file(json));
  std::vector<std::string> steps;
  size_t model_rows = 0;
  for (const auto& row : rows) {
    if (row["case"].get<std::string>().rfind("transformer_", 0) != 0) continue;  // the grouped-path table
    ++model_rows;
    EXPECT_EQ(row["arch"], "transformer") << row.dump();
    EXPECT_GT(row["peak_rss_mb"].get<double>(), 0.0) << row.dump();
    if (row["case"] != "transformer_train_step") continue;
    steps.push_back(row["precision"].get<std::string>());
    EXPECT_NEAR(row["fraction_of_sgemm"].get<double>(),
                row["model_gflops"].get<double>() / row["sgemm_gflops"].get<double>(), 1e-12);
  }
  ASSERT_EQ(model_rows, 4u);  // a training step and an evaluation, in each precision
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[0], "float32");
  EXPECT_EQ(steps[1], moelab::detect_cpu_features().avx512_bf16 ? "bf16" : "bf16 (emulated)");
}

TEST_F(Cli, BenchWritesRowsWithTheCommonKeys) {
  TempDir dir;
  const std::string json = dir.file("bench.json"), profile = dir.file("profile.md");
  const auto r = run_moelab("bench --quick --only model,layer,banks,slow_paths --tokens 64 --dim 8 --hidden 16"
                            " --samples 1 --warmup 0 --threads 1 --json " + sq(json) + " --profile " + sq(profile) +
                            " --set data.corpus=" +
                            sq(corpus_) +
                            " --set model.embed=16 --set model.hidden=16 --set moe.experts=4 --set moe.k=2"
                            " --set moe.expert_hidden=16 --set train.batch=4 --set train.bptt=8 --set model.softmax=full");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* table :
       {"### train_step", "### eval", "### layer", "### bank", "### naive", "### module_loop", "### grouped_path"})
    EXPECT_NE(r.output.find(table), std::string::npos) << table << "\n" << r.output;
  const auto rows = nlohmann::json::parse(read_file(json));
  ASSERT_TRUE(rows.is_array());
  std::set<std::string> cases, banks;
  for (const auto& row : rows) {
    for (const char* key : {"case", "experts", "k", "bank", "ms", "dense_ms", "ratio_vs_dense"})
      EXPECT_TRUE(row.contains(key)) << key << " missing in " << row.dump();
    EXPECT_GT(row["ms"].get<double>(), 0.0) << row.dump();
    cases.insert(row["case"].get<std::string>());
    if (row["case"] == "bank") banks.insert(row["bank"].get<std::string>());
  }
  // grouped_path: what the automatic path choice measured for each product shape the rows ran.
  EXPECT_EQ(cases, (std::set<std::string>{"train_step", "eval", "layer", "bank", "naive", "module_loop", "grouped_path"}));
  EXPECT_EQ(banks.size(), moelab::expert_bank_names().size());
  EXPECT_EQ(std::count_if(rows.begin(), rows.end(), [](const auto& row) { return row["case"] == "layer"; }), 6);
  // --profile: an operator table for the model's training step and for every layer row.
  const auto tables = read_file(profile);
  EXPECT_NE(tables.find("## train_step: lstm (moe, float32)"), std::string::npos) << tables;
  size_t layer_tables = 0;
  for (size_t at = tables.find("## layer: E = "); at != std::string::npos; at = tables.find("## layer: E = ", at + 1))
    ++layer_tables;
  EXPECT_EQ(layer_tables, 6u) << tables;
  EXPECT_NE(tables.find("| aten::mm |"), std::string::npos) << tables;
  // The layer rows against the machine: active GFLOP/s as a fraction of the same run's sgemm, and
  // the bytes a pass moves. E = 8, k = 2, D = 8, H = 16, 64 tokens: 3 x 8 experts x (2 x 8 x 16 + 16
  // + 8) parameters and 6 x 128 rows x (2 x 8 + 16) activations, 4 bytes each.
  for (const auto& row : rows) {
    if (row["case"] != "layer") continue;
    for (const char* key : {"gflops", "sgemm_gflops", "fraction_of_sgemm", "bytes_moved_mb", "copy_gbs", "ms_at_bandwidth"})
      ASSERT_TRUE(row.contains(key)) << key << " missing in " << row.dump();
    EXPECT_GT(row["sgemm_gflops"].get<double>(), 0.0);
    EXPECT_GT(row["copy_gbs"].get<double>(), 0.0);
    EXPECT_NEAR(row["gflops"].get<double>() * row["ms"].get<double>() * 1e6, row["active_flops"].get<double>(), 1e-3);
    EXPECT_NEAR(row["fraction_of_sgemm"].get<double>(),
                row["gflops"].get<double>() / row["sgemm_gflops"].get<double>(), 1e-12);
    if (row["experts"] == 8 && row["k"] == 2) {
      EXPECT_NEAR(row["bytes_moved_mb"].get<double>(), 4.0 * (3 * 8 * 280 + 6 * 128 * 32) / 1e6, 1e-12);
      EXPECT_GE(row["active_flops"].get<double>(), 3.0 * 64 * 2 * (2 * 8 * 16 * 2)) << "two products of 8 x 16 per slot";
    }
  }
}

TEST_F(Cli, BenchRejectsBadInput) {
  expect_one_line_error(run_moelab("bench --only everything"), "unknown bench section 'everything'");
  expect_one_line_error(run_moelab("bench --quick --device tpu"), "--device must be \"cpu\", \"cuda\" or \"cuda:N\"");
  expect_one_line_error(run_moelab("bench --quick --path fastest"), "unknown grouped path 'fastest'");
}

// Asking for a GPU where there is none ends in one line that says which LibTorch this is, before any
// checkpoint is written; a bad device name likewise.
TEST_F(Cli, CudaDeviceWithoutAGpuIsOneLine) {
  if (moelab::cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  const std::string expected = moelab::built_with_cuda() ? "no CUDA device is available" : "CPU only";
  expect_tiny_train_refused({{"--set train.device=cuda", "train.device = \"cuda\": "},
                             {"--set train.device=cuda:1", expected},
                             {"--set train.device=gpu", "train.device must be \"cpu\", \"cuda\" or \"cuda:N\""}});
  expect_one_line_error(run_moelab("bench --quick --device cuda"), expected);
  expect_one_line_error(run_moelab("eval --run " + sq(base_run()) + " --device cuda"), expected);
  expect_one_line_error(run_moelab("generate --run " + sq(base_run()) + " --device cuda:0"), expected);
  const auto r = run_moelab("info --system");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(moelab::libtorch_description()), std::string::npos) << r.output;
}

// A run trained on a GPU evaluates on the CPU and the reverse, to the same perplexity, and a GPU
// run resumes on the CPU. Needs a GPU.
TEST_F(Cli, CheckpointsMoveBetweenCpuAndGpu) {
  if (moelab::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (" << moelab::libtorch_description() << ")";
  const std::string eval = sq(moelab_executable()) + " eval";
  auto same_perplexity_on_both = [&](const std::string& run) {
    expect_same_perplexity(run, eval + " --device cpu", eval + " --device cuda", 1e-3);
  };
  TempDir dir;
  // Stopped on the GPU at step 5 (a planted NaN) with its step-3 checkpoint, finished on the CPU.
  const auto run = dir.file("gpu");
  auto r = run_moelab("train " + tiny_flags(corpus_) + " --set train.device=cuda --set debug.nan_at_step=5 --out " +
                      sq(run));
  ASSERT_NE(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(run + "/checkpoint.pt")) << r.output;
  same_perplexity_on_both(run);
  r = run_moelab("train " + tiny_flags(corpus_) + " --set train.device=cpu --set debug.nan_at_step=0 --resume --out " +
                 sq(run));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(read_file(run + "/summary.json"))["steps"].get<int64_t>(), 6);
  same_perplexity_on_both(base_run());
}

// A checkpoint written by the other LibTorch build (Debian's 1.13 or PyPI's 2.x) evaluates here to
// the perplexity it has there and resumes here (model, optimizer state, generators), and one written
// here evaluates there. scripts/test.sh points MOELAB_PEER_EXECUTABLE at the first build's moelab
// while it tests the second.
TEST_F(Cli, CheckpointsMoveBetweenLibTorchBuilds) {
  const char* peer_env = std::getenv("MOELAB_PEER_EXECUTABLE");
  if (!peer_env || !*peer_env)
    GTEST_SKIP() << "MOELAB_PEER_EXECUTABLE is not set (scripts/test.sh sets it to the other LibTorch build's moelab)";
  const std::string peer = sq(peer_env);
  auto same_perplexity_on_both = [&](const std::string& run) {
    expect_same_perplexity(run, sq(moelab_executable()) + " eval", peer + " eval", 1e-4);
  };
  TempDir dir;
  // The peer stops at step 5 (a planted NaN) with its step-3 checkpoint; this build finishes the run.
  const auto run = dir.file("peer");
  auto r = run_shell(peer + " train " + tiny_flags(corpus_) + " --set debug.nan_at_step=5 --out " + sq(run) + " 2>&1");
  ASSERT_NE(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(run + "/checkpoint.pt")) << r.output;
  same_perplexity_on_both(run);
  r = run_moelab("train " + tiny_flags(corpus_) + " --set debug.nan_at_step=0 --resume --out " + sq(run));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(read_file(run + "/summary.json"))["steps"].get<int64_t>(), 6);
  same_perplexity_on_both(run);
  same_perplexity_on_both(base_run());
}

// Where LibTorch exports its own std::filesystem (PyPI's 2.x), a moelab started with that library
// ahead of libstdc++ (LD_PRELOAD puts it first, as a link line without libstdc++ first would) runs
// itself again with libstdc++ preloaded, and says so; when even that cannot help, one line and exit
// code 1 instead of a crash at the first directory it removes.
TEST_F(Cli, RunsAgainWithLibstdcxxWhenFilesystemResolvesIntoLibTorch) {
  std::string torch_cpu;
  {
    std::ifstream maps("/proc/self/maps");
    for (std::string line; std::getline(maps, line);) {
      const auto at = line.find('/');
      if (at != std::string::npos && line.find("libtorch_cpu.so") != std::string::npos) torch_cpu = line.substr(at);
    }
  }
  if (torch_cpu.empty()) GTEST_SKIP() << "no libtorch_cpu.so in this process";
  void* handle = dlopen(torch_cpu.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  ASSERT_NE(handle, nullptr) << torch_cpu;
  // dlsym on a handle searches the library, then its dependencies: ask which one answered.
  void* symbol = dlsym(handle, "_ZNSt10filesystem10remove_allERKNS_7__cxx114pathE");
  Dl_info info{};
  const bool torch_exports = symbol && dladdr(symbol, &info) && info.dli_fname &&
                             std::string(info.dli_fname).find("libtorch_cpu.so") != std::string::npos;
  dlclose(handle);
  if (!torch_exports) GTEST_SKIP() << "this LibTorch does not export a std::filesystem of its own";

  EXPECT_NE(moelab::filesystem_library().find("libstdc++.so"), std::string::npos) << moelab::filesystem_library();
  const std::string preload = "LD_PRELOAD=" + sq(torch_cpu) + " ";
  auto r = run_shell(preload + sq(moelab_executable()) + " info --system");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("libstdc++.so"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(preloaded by moelab; it had resolved to " + torch_cpu + ")"), std::string::npos)
      << r.output;
  // Iterating and removing directories is what crashed in LibTorch's copy: a run replaced by --force.
  TempDir dir;
  const auto run = dir.file("run");
  fs::create_directories(run + "/old/deeper");
  std::ofstream(run + "/old/deeper/file.txt") << "x\n";
  r = run_shell(preload + sq(moelab_executable()) + " train " + tiny_flags(corpus_) + " --force --out " + sq(run));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(run + "/summary.json"));

  // A marker inherited from another process (this suite may itself run mended) leaves the guard its try;
  // the process's own marker (exec keeps the id: the shell's, here) means the try is spent.
  r = run_shell("MOELAB_LIBSTDCXX_REEXEC='1 /elsewhere' " + preload + sq(moelab_executable()) + " info --system");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("(preloaded by moelab; it had resolved to " + torch_cpu + ")"), std::string::npos)
      << r.output;
  r = run_shell("export MOELAB_LIBSTDCXX_REEXEC=\"$$ /elsewhere\" LD_PRELOAD=" + sq(torch_cpu) + "; exec " +
                sq(moelab_executable()) + " info --system");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("moelab: error: std::filesystem resolves to " + torch_cpu +
                          ", not to libstdc++ even with libstdc++ preloaded"),
            std::string::npos)
      << r.output;
}

// A user's OPENBLAS_CORETYPE is kept as given, never replaced by moelab's choice.
TEST_F(Cli, KeepsTheUsersOpenBlasCoreType) {
  const auto plain = run_moelab("info --system");
  if (plain.output.find("OpenBLAS       not loaded") != std::string::npos) GTEST_SKIP() << "BLAS is not OpenBLAS";
  // As from a user's shell: this test process may itself have been re-run by moelab with its marker
  // set (on CPUs where OpenBLAS detects an old core), which the child must not inherit.
  const auto r =
      run_shell(std::string("env -u MOELAB_BLAS_REEXEC OPENBLAS_CORETYPE=Haswell '") + moelab_executable() + "' info --system");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("core type      Haswell (OPENBLAS_CORETYPE set by the user)"), std::string::npos)
      << r.output;
}
