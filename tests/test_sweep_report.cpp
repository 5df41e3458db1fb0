// Sweeps and reports: the statistics, the expansion of configs x grid x seeds and study files, and
// end to end through the executable (resumption, a failing run, every plot a real PNG).
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <thread>
#include <tuple>
#include <nlohmann/json.hpp>

#include "moelab/config/config.h"
#include "moelab/report/aggregate.h"
#include "moelab/report/plots.h"
#include "moelab/report/sweep.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/trainer.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"
#include "test_util.h"

using namespace moelab;
using moelab::testing::make_corpus;
using moelab::testing::read_file;
using moelab::testing::run_moelab;
using moelab::testing::source_dir;
using moelab::testing::TempDir;
using moelab::testing::write_file;

namespace fs = std::filesystem;

namespace {

// A run directory as training leaves it, with the figures given.
void made_run(const std::string& dir, double valid_ppl, double params, const std::vector<double>& load) {
  fs::create_directories(dir);
  write_file(dir + "/config.toml", "");
  const nlohmann::json summary = {{"valid_ppl", valid_ppl},
                                  {"test_ppl", valid_ppl + 1},
                                  {"params_total", params},
                                  {"params_active_per_token", params / 2},
                                  {"tokens_per_step", 100},
                                  {"moe_layers", {{{"expert_load", load}, {"load_cv", 0.5}}}}};
  write_file(dir + "/summary.json", summary.dump());
  std::string metrics;
  for (int step = 10; step <= 30; step += 10) {
    const double window_cv = step == 30 ? 0.3 : 0.9;  // only the last quarter of windows counts
    metrics += nlohmann::json({{"step", step}, {"loss", 5.0}, {"moe_layers", {{{"expert_load", load}, {"load_cv", window_cv}}}}})
                   .dump() +
               "\n";
    metrics += nlohmann::json({{"step", step}, {"valid_ppl", valid_ppl * (40 - step) / 10}, {"train_seconds", step * 0.1}})
                   .dump() +
               "\n";
  }
  write_file(dir + "/metrics.jsonl", metrics + "{\"step\": 40, \"cut short by a ki");
}

// A sweep directory with variants a (seeds 1..3, ppl 10, 12, 14) and b (seed 1 finished, seed 2 failed).
void made_sweep(const std::string& dir) {
  nlohmann::json runs = nlohmann::json::array();
  const double ppl_a[] = {10, 12, 14};
  for (int seed = 1; seed <= 3; ++seed) {
    const auto run_dir = "a/seed" + std::to_string(seed);
    made_run(dir + "/" + run_dir, ppl_a[seed - 1], 1000, {0.5, 0.25, 0.25});
    runs.push_back({{"variant", "a"}, {"seed", seed}, {"directory", run_dir}, {"status", "finished"}});
  }
  made_run(dir + "/b/seed1", 20, 500, {0.9, 0.05, 0.05});
  runs.push_back({{"variant", "b"}, {"seed", 1}, {"directory", "b/seed1"}, {"status", "finished"}});
  runs.push_back({{"variant", "b"}, {"seed", 2}, {"directory", "b/seed2"}, {"status", "failed"}, {"error", "boom"}});
  write_file(dir + "/sweep.json",
             nlohmann::json({{"title", "made"}, {"seeds", 3}, {"command", "moelab sweep ..."}, {"runs", runs}}).dump());
}

// `moelab report DIR --out DIR/report`, and the report.md it wrote.
std::string written_report(const TempDir& dir) {
  const auto r = run_moelab("report '" + dir.path() + "' --out '" + dir.file("report") + "'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return read_file(dir.file("report/report.md"));
}

}  // namespace

TEST(Aggregate, MeanSampleStdAndCountSkipAbsentValues) {
  const auto s = summarize({1.0, 2.0, 3.0, std::nan("")});
  EXPECT_EQ(s.n, 3);
  EXPECT_DOUBLE_EQ(s.mean, 2.0);
  EXPECT_DOUBLE_EQ(s.std, 1.0);  // sample std: sqrt(((1-2)^2 + 0 + (3-2)^2) / (3 - 1))
  const auto one = summarize({7.0});
  EXPECT_EQ(one.n, 1);
  EXPECT_DOUBLE_EQ(one.std, 0.0);
  EXPECT_EQ(summarize({}).n, 0);
  // Three equal seeds whose sum rounds (the FLOPs per token of a translation run): no spread.
  const double flops = 7801415.759884847;
  ASSERT_NE((flops + flops + flops) / 3, flops);
  const auto equal = summarize({flops, std::nan(""), flops, flops});
  EXPECT_EQ(equal.n, 3);
  EXPECT_EQ(equal.mean, flops);
  EXPECT_EQ(equal.std, 0.0);
}

TEST(Aggregate, MadeSweepGivesPerVariantStatisticsAndMarksTheBest) {
  TempDir dir;
  made_sweep(dir.path());
  const auto runs = load_runs(dir.path());
  ASSERT_EQ(runs.size(), 5u);
  EXPECT_EQ(runs.front().metrics.size(), 6u);  // the line cut short by a kill is skipped
  const auto variants = aggregate_runs(runs);
  ASSERT_EQ(variants.size(), 2u);
  const auto& a = variants[0].metrics.at("valid_ppl");
  EXPECT_EQ(a.n, 3);
  EXPECT_DOUBLE_EQ(a.mean, 12.0);
  EXPECT_DOUBLE_EQ(a.std, 2.0);
  EXPECT_DOUBLE_EQ(variants[0].metrics.at("load_cv").mean, 0.5);  // from the first MoE layer
  EXPECT_DOUBLE_EQ(variants[0].metrics.at("train_load_cv").mean, 0.3);
  EXPECT_EQ(variants[1].finished.size(), 1u);
  EXPECT_EQ(variants[1].unfinished.size(), 1u);
  const auto table = results_markdown(variants);
  EXPECT_NE(table.find("| a | 3 | **12.00 ± 2.00** |"), std::string::npos) << table;
  EXPECT_NE(table.find("| b | 1 (+1 not finished) | 20.00 |"), std::string::npos) << table;
  EXPECT_NE(table.find("**500**"), std::string::npos) << "fewer parameters is better:\n" << table;
  const auto csv = results_csv(variants);
  EXPECT_NE(csv.find("a,3,12,2,"), std::string::npos) << csv;
  EXPECT_EQ(results_json(variants)["runs"].size(), 5u);
}

TEST(Aggregate, ComparisonSaysWhetherSeedRangesOverlapWithTheBaseline) {
  // base 10, 11, 12; apart below (7, 8, 9.5), overlapping (9, 10.5), apart above (13, 14), one seed (5).
  std::vector<RunRecord> runs;
  auto add = [&](const std::string& variant, std::vector<double> ppls) {
    for (size_t i = 0; i < ppls.size(); ++i)
      runs.push_back({variant, static_cast<int64_t>(i + 1), variant + "/seed" + std::to_string(i + 1), "finished", "",
                      nlohmann::json{{"valid_ppl", ppls[i]}}, {}});
  };
  add("base", {10, 11, 12});
  add("better", {7, 8, 9.5});
  add("overlap", {9, 10.5});
  add("worse", {13, 14});
  add("single", {5});
  const auto table = comparison_markdown(aggregate_runs(runs), "valid_ppl");
  EXPECT_NE(table.find("Each variant against `base`"), std::string::npos) << table;
  // better: mean 8.1667 - 11 = -2.83; standard error sqrt(1.5833 / 3 + 1 / 3) = 0.93.
  const std::string base = " | base (3 seeds, 10.00 … 12.00) | ";
  EXPECT_NE(table.find("| better | 3" + base + "-2.83 | 0.93 | 7.00 … 9.50 | **lower, beyond the seed spread** |"),
            std::string::npos)
      << table;
  EXPECT_NE(table.find("| overlap | 2" + base + "-1.25 |"), std::string::npos) << table;
  EXPECT_NE(table.find("| 9.00 … 10.50 | within the seed spread |"), std::string::npos) << table;
  EXPECT_NE(table.find("| worse | 2" + base + "+2.50 |"), std::string::npos) << table;
  EXPECT_NE(table.find("higher, beyond the seed spread"), std::string::npos) << table;
  EXPECT_NE(table.find("| single | 1" + base + "-6.00 | – | 5.00 … 5.00 | one seed: spread unknown |"),
            std::string::npos)
      << table;
  EXPECT_EQ(comparison_markdown(aggregate_runs({runs.front()}), "valid_ppl"), "");

  // A variant the study gives its own baseline is measured against that one (worse against better:
  // 13.5 - 8.1667 = +5.33), the rest against the first; a named baseline without finished runs
  // (or unknown) gives a row that says so, never a comparison with another variant.
  const auto named = comparison_markdown(aggregate_runs(runs), "valid_ppl",
                                         {{"worse", "better"}, {"overlap", "missing"}, {"better", "base"}});
  EXPECT_NE(named.find("| worse | 2 | better (3 seeds, 7.00 … 9.50) | +5.33 |"), std::string::npos) << named;
  // Several seeds against a baseline of one: the spread that is unknown is the baseline's.
  const auto against_one = comparison_markdown(aggregate_runs(runs), "valid_ppl", {{"worse", "single"}});
  EXPECT_NE(against_one.find("| worse | 2 | single (1 seed, 5.00 … 5.00) | +8.50 | – | 13.00 … 14.00 | baseline of "
                             "one seed: its spread unknown |"),
            std::string::npos)
      << against_one;
  EXPECT_NE(named.find("| overlap | 2 | missing (no finished runs) | – | – | 9.00 … 10.50 | baseline not finished |"),
            std::string::npos)
      << named;
  EXPECT_EQ(named.find("| overlap | 2" + base), std::string::npos) << named;
  EXPECT_NE(named.find("| better | 3" + base + "-2.83 |"), std::string::npos) << named;
  EXPECT_NE(named.find("Each variant against `base`, or against the baseline the study names for it:"),
            std::string::npos)
      << named;
  // Where every row has a baseline of its own, the intro names no default one.
  const auto all_named = comparison_markdown(aggregate_runs(runs), "valid_ppl",
                                             {{"better", "base"}, {"overlap", "base"}, {"worse", "better"},
                                              {"single", kNoBaseline}});
  EXPECT_NE(all_named.find("Each variant against the baseline the study names for it:"), std::string::npos)
      << all_named;
  EXPECT_EQ(all_named.find("against `base`"), std::string::npos) << all_named;

  // baseline = "none": a model of another family gets no row, the rest are as before.
  const auto without = comparison_markdown(aggregate_runs(runs), "valid_ppl", {{"worse", kNoBaseline}});
  EXPECT_EQ(without.find("| worse |"), std::string::npos) << without;
  EXPECT_NE(without.find("| better | 3" + base + "-2.83 |"), std::string::npos) << without;
  EXPECT_EQ(comparison_markdown(aggregate_runs({runs[0], runs[3]}), "valid_ppl", {{"better", kNoBaseline}}), "");
}

TEST(Aggregate, ComparisonOnAFigureWhereHigherIsBetterMarksTheHigherSide) {
  // test BLEU: dense 30, 31, 32; moe 33, 34, 35 (apart above, better); weak 27, 28 (apart below).
  std::vector<RunRecord> runs;
  auto add = [&](const std::string& variant, std::vector<double> bleus) {
    for (size_t i = 0; i < bleus.size(); ++i)
      runs.push_back({variant, static_cast<int64_t>(i + 1), variant + "/seed" + std::to_string(i + 1), "finished", "",
                      nlohmann::json{{"test_bleu", bleus[i]}, {"valid_ppl", 10.0 + static_cast<double>(i)}}, {}});
  };
  add("dense", {30, 31, 32});
  add("moe", {33, 34, 35});
  add("weak", {27, 28});
  const auto table = comparison_markdown(aggregate_runs(runs), "test_bleu");
  EXPECT_NE(table.find("difference of the mean test BLEU (positive is better)"), std::string::npos) << table;
  EXPECT_NE(table.find("| moe | 3 | dense (3 seeds, 30.00 … 32.00) | +3.00 | 0.82 | 33.00 … 35.00 | "
                       "**higher, beyond the seed spread** |"),
            std::string::npos)
      << table;
  EXPECT_NE(table.find("| weak | 2 | dense (3 seeds, 30.00 … 32.00) | -3.50 |"), std::string::npos) << table;
  EXPECT_NE(table.find("| 27.00 … 28.00 | lower, beyond the seed spread |"), std::string::npos) << table;
  EXPECT_EQ(table.find("**lower"), std::string::npos) << table;
  // Perplexity keeps its direction, and a figure that is not a column compares as lower-is-better.
  EXPECT_NE(comparison_markdown(aggregate_runs(runs), "valid_ppl").find("(negative is better)"), std::string::npos);
  EXPECT_EQ(report_column("test_bleu")->lower_is_better, false);
  EXPECT_EQ(report_column("no_such_figure"), nullptr);
  for (const auto& key : headline_metrics()) EXPECT_NE(report_column(key), nullptr) << key;
}

// scripts/keep_sweep.sh: finished runs' small files go, checkpoints and half-trained runs stay
// behind, and the copy put back reads as the same sweep.
TEST(KeepSweep, KeepsFinishedRunsWithoutCheckpointsAndPutsThemBack) {
  TempDir dir;
  const auto sweep = dir.file("sweep"), kept = dir.file("kept"), back = dir.file("back");
  made_sweep(sweep);
  write_file(sweep + "/a/seed1/checkpoint.pt", "weights");
  write_file(sweep + "/a/seed1/vocab.txt", "the\n");
  fs::create_directories(sweep + "/b/seed2");  // started, never finished
  write_file(sweep + "/b/seed2/config.toml", "");
  write_file(sweep + "/b/seed2/metrics.jsonl", "{}\n");
  const std::string script = source_dir() + "/scripts/keep_sweep.sh";
  ASSERT_EQ(std::system(("bash '" + script + "' '" + sweep + "' '" + kept + "' > /dev/null").c_str()), 0);
  EXPECT_TRUE(fs::is_regular_file(kept + "/sweep.json"));
  EXPECT_TRUE(fs::is_regular_file(kept + "/a/seed1/metrics.jsonl"));
  EXPECT_TRUE(fs::is_regular_file(kept + "/b/seed1/summary.json"));
  EXPECT_FALSE(fs::exists(kept + "/a/seed1/checkpoint.pt"));
  EXPECT_FALSE(fs::exists(kept + "/a/seed1/vocab.txt"));
  EXPECT_FALSE(fs::exists(kept + "/b/seed2"));
  ASSERT_EQ(std::system(("bash '" + script + "' '" + kept + "' '" + back + "' > /dev/null").c_str()), 0);
  const auto original = aggregate_runs(load_runs(sweep)), restored = aggregate_runs(load_runs(back));
  ASSERT_EQ(restored.size(), original.size());
  for (size_t i = 0; i < original.size(); ++i) {
    EXPECT_EQ(restored[i].finished.size(), original[i].finished.size());
    EXPECT_DOUBLE_EQ(restored[i].metrics.at("valid_ppl").mean, original[i].metrics.at("valid_ppl").mean);
  }
  EXPECT_NE(std::system(("bash '" + script + "' '" + dir.file("none") + "' '" + back + "' 2> /dev/null").c_str()), 0);
}

// An upcycled run's curves start where its source ended: the source's tokens and seconds, found
// through the sweep's manifest, else its steps at the run's own tokens per step.
TEST(Aggregate, UpcycledRunsStartWhereTheirSourceEnded) {
  TempDir dir;
  const auto sweep = dir.file("sweep");
  for (const char* run : {"d/seed1", "u/seed1"}) {
    fs::create_directories(sweep + "/" + run);
    write_file(sweep + "/" + run + "/config.toml", "");
  }
  write_file(sweep + "/d/seed1/summary.json",
             nlohmann::json({{"valid_ppl", 10}, {"tokens_per_step", 100}, {"train_seconds", 7.5}}).dump());
  write_file(sweep + "/u/seed1/summary.json",
             nlohmann::json({{"valid_ppl", 9},
                             {"tokens_per_step", 50},
                             {"upcycle", {{"from", "/nowhere/d/seed1"}, {"source_step", 30}}}})
                 .dump());
  const nlohmann::json runs = {
      {{"variant", "d"}, {"seed", 1}, {"directory", "d/seed1"}, {"status", "finished"}},
      {{"variant", "u"}, {"seed", 1}, {"directory", "u/seed1"}, {"status", "finished"}, {"upcycle", {{"from", "d/seed1"}}}}};
  write_file(sweep + "/sweep.json", nlohmann::json({{"title", "t"}, {"runs", runs}}).dump());
  const auto loaded = load_runs(sweep);
  ASSERT_EQ(loaded.size(), 2u);
  EXPECT_EQ(loaded[0].tokens_before, 0.0);
  EXPECT_EQ(loaded[1].tokens_before, 3000.0);  // 30 source steps of 100 tokens
  EXPECT_EQ(loaded[1].seconds_before, 7.5);
  // Alone, with its source's folder out of reach (upcycle.json's path is gone): its own batch.
  const auto alone = load_runs(sweep + "/u/seed1");
  ASSERT_EQ(alone.size(), 1u);
  EXPECT_EQ(alone[0].tokens_before, 1500.0);
  EXPECT_EQ(alone[0].seconds_before, 0.0);
}

TEST(Aggregate, RefusesADirectoryThatIsNeitherSweepNorRun) {
  TempDir dir;
  EXPECT_THROW(load_runs(dir.path()), Error);
  EXPECT_THROW(load_runs(dir.file("missing")), Error);
}

TEST(Sweep, ExpandsConfigsTimesGridTimesSeedsWithReadableNames) {
  TempDir dir;
  write_file(dir.file("small.toml"), "[model]\nhidden = 16\n");
  write_file(dir.file("wide.toml"), "[model]\nhidden = 32\n");
  auto spec = sweep_from_configs({dir.file("small.toml"), dir.file("wide.toml")});
  spec.grid.push_back(parse_grid_axis("moe.experts=4,8"));
  spec.overrides.push_back("train.steps=5");
  spec.seeds = 2;
  const auto runs = expand_sweep(spec);
  ASSERT_EQ(runs.size(), 8u);
  EXPECT_EQ(runs[0].directory, "small__moe.experts=4/seed1");
  EXPECT_EQ(runs[3].directory, "small__moe.experts=8/seed2");
  EXPECT_EQ(runs[7].directory, "wide__moe.experts=8/seed2");
  EXPECT_EQ(runs[3].overrides, (std::vector<std::string>{"moe.experts=8", "train.steps=5", "train.seed=2"}));
  EXPECT_THROW(parse_grid_axis("moe.experts"), Error);
  EXPECT_THROW(parse_grid_axis("moe.experts=4,,8"), Error);
  auto both = spec;  // a --set of a grid key would silently win over every grid point
  both.overrides.push_back("moe.experts=16");
  EXPECT_THROW(expand_sweep(both), Error);
  auto spaced = spec;  // --set trims the key, so the check must too
  spaced.overrides.push_back(" moe.experts = 16");
  EXPECT_THROW(expand_sweep(spaced), Error);
  spec.grid.push_back(parse_grid_axis("moe.no_such_key=1"));
  EXPECT_THROW(expand_sweep(spec), Error);  // bad keys fail before anything trains
  EXPECT_THROW(sweep_from_configs({dir.file("missing.toml")}), Error);
  EXPECT_EQ(readable_name("a b/c"), "a_b_c");
  // A variant's name is a directory under --out: it must not climb out of it or hide in it.
  EXPECT_EQ(readable_name(".."), "_..");
  EXPECT_EQ(readable_name("."), "_.");
  EXPECT_EQ(readable_name(".hidden"), "_.hidden");
  EXPECT_EQ(readable_name(""), "_");
  SweepSpec climbing = sweep_from_configs({dir.file("small.toml")});
  climbing.variants.front().name = "..";
  climbing.seeds = 1;
  for (const auto& run : expand_sweep(climbing))
    EXPECT_EQ(fs::path(run.directory).lexically_normal().string().rfind("..", 0), std::string::npos) << run.directory;
}

TEST(Sweep, StartsResumableRunsFirstThenSeedBySeed) {
  std::vector<SweepRun> runs;
  for (const char* variant : {"dense", "moe"})
    for (int64_t seed = 1; seed <= 3; ++seed) {
      SweepRun run;
      run.variant = variant;
      run.seed = seed;
      run.directory = std::string(variant) + "/seed" + std::to_string(seed);
      runs.push_back(run);
    }
  auto directories = [&](const std::vector<size_t>& order) {
    std::vector<std::string> out;
    for (const size_t i : order) out.push_back(runs[i].directory);
    return out;
  };
  // dense/seed1 finished; moe/seed2 and dense/seed3 were interrupted with a checkpoint.
  const std::vector<size_t> pending = {1, 2, 3, 4, 5};
  std::vector<bool> resumable(runs.size(), false);
  resumable[4] = resumable[2] = true;
  EXPECT_EQ(directories(sweep_start_order(runs, pending, resumable)),
            (std::vector<std::string>{"moe/seed2", "dense/seed3", "moe/seed1", "dense/seed2", "moe/seed3"}));
  EXPECT_EQ(directories(sweep_start_order(runs, {0, 1, 2, 3, 4, 5}, std::vector<bool>(runs.size(), false))),
            (std::vector<std::string>{"dense/seed1", "moe/seed1", "dense/seed2", "moe/seed2", "dense/seed3", "moe/seed3"}));
}

TEST(Sweep, KeepVariantsRunsPartOfAStudyByNameOrPrefix) {
  SweepSpec spec;
  for (const char* name : {"lstm_none", "lstm_switch", "transformer_none", "transformer_switch"})
    spec.variants.push_back({name, "", {}, std::nullopt, ""});
  auto names = [](const SweepSpec& kept) {
    std::vector<std::string> out;
    for (const auto& variant : kept.variants) out.push_back(variant.name);
    return out;
  };
  auto transformers = spec;
  keep_variants(transformers, {"transformer_*"});
  EXPECT_EQ(names(transformers), (std::vector<std::string>{"transformer_none", "transformer_switch"}));
  auto mixed = spec;  // the study's order, not the patterns'
  keep_variants(mixed, {"transformer_switch", "lstm_none"});
  EXPECT_EQ(names(mixed), (std::vector<std::string>{"lstm_none", "transformer_switch"}));
  auto exact = spec;  // no pattern without '*' is a prefix
  EXPECT_THROW(keep_variants(exact, {"lstm"}), Error);
  EXPECT_THROW(keep_variants(exact, {"lstm_none", "gru_*"}), Error);
}

// A study that names a baseline after some runs were listed: a sweep over part of it records the
// new baseline for every run it does not run now (variants it leaves out, seeds beyond --seeds) and
// keeps their state. Where the whole study does not expand, the recorded baselines stay.
TEST(Sweep, RunsListedBeforeTakeTheBaselineTheStudyNamesNow) {
  TempDir dir;
  write_file(dir.file("base.toml"), "[train]\nsteps = 10\n");
  write_file(dir.file("study.toml"), R"([study]
name = "late"
seeds = 1
base = "base.toml"
[[variant]]
name = "lstm"
baseline = "none"
[[variant]]
name = "dense"
[[variant]]
name = "moe"
baseline = "dense"
)");
  const auto out = dir.file("sweep");
  nlohmann::json old_runs = nlohmann::json::array();
  for (const std::string variant : {"lstm", "dense", "moe"}) {
    fs::create_directories(out + "/" + variant + "/seed1");
    write_file(out + "/" + variant + "/seed1/summary.json", "{}\n");  // finished: nothing trains
    old_runs.push_back({{"variant", variant}, {"seed", 1}, {"directory", variant + "/seed1"}, {"status", "finished"}});
  }
  old_runs[2]["baseline"] = "lstm";  // what an earlier study file said
  // Seeds an earlier sweep ran with more --seeds, of a variant left out and of one run now: listed
  // after the others, they would decide the report's baseline if they kept the old one.
  for (const std::string variant : {"moe", "dense"})
    old_runs.push_back(
        {{"variant", variant}, {"seed", 3}, {"directory", variant + "/seed3"}, {"status", "finished"}, {"baseline", "lstm"}});
  write_file(out + "/sweep.json", nlohmann::json{{"runs", old_runs}}.dump(2));
  auto spec = parse_study_file(dir.file("study.toml"));
  keep_variants(spec, {"dense"});
  SweepOptions options;
  options.out_dir = out;
  options.quiet = true;
  const auto outcome = run_sweep(spec, options);
  EXPECT_EQ(outcome.skipped, 1);
  EXPECT_EQ(outcome.finished, 0);
  std::map<std::string, nlohmann::json> entries;  // by directory
  const auto manifest = read_sweep_manifest(out);
  for (const auto& entry : manifest["runs"]) entries[entry["directory"].get<std::string>()] = entry;
  ASSERT_EQ(entries.size(), 5u);
  EXPECT_EQ(entries["moe/seed3"].value("baseline", ""), "dense");
  EXPECT_FALSE(entries["dense/seed3"].contains("baseline"));
  EXPECT_EQ(entries["lstm/seed1"].value("baseline", ""), "none");
  EXPECT_EQ(entries["moe/seed1"].value("baseline", ""), "dense");
  EXPECT_FALSE(entries["dense/seed1"].contains("baseline"));
  for (const auto& [directory, entry] : entries) EXPECT_EQ(entry["status"], "finished") << directory;

  write_file(dir.file("study.toml"), read_file(dir.file("study.toml")) + "[[variant]]\nname = \"bad\"\nset = [\"moe.k=99\"]\n");
  write_file(out + "/sweep.json", nlohmann::json{{"runs", old_runs}}.dump(2));
  auto broken = parse_study_file(dir.file("study.toml"));
  keep_variants(broken, {"dense"});
  EXPECT_EQ(run_sweep(broken, options).skipped, 1);
  const auto kept = read_sweep_manifest(out);
  int seen = 0;
  for (const auto& entry : kept["runs"]) {
    if (entry["directory"] != "moe/seed1") continue;
    ++seen;
    EXPECT_EQ(entry.value("baseline", ""), "lstm");
  }
  EXPECT_EQ(seen, 1) << kept.dump(2);
}

TEST(Sweep, StudyFileWithBaseVariantsGridAndScale) {
  TempDir dir;
  write_file(dir.file("base.toml"), "[train]\nsteps = 10\n[model]\nhidden = 16\n");
  write_file(dir.file("study.toml"), R"(
[study]
name = "made"
title = "A made study"
seeds = 2
base = "base.toml"
set = ["moe.experts=4"]
[study.scale]
"train.steps" = 1.0
"model.hidden" = 0.5
[grid]
"moe.k" = [1, 2]
[[variant]]
name = "plain"
[[variant]]
name = "noisy"
set = ["moe.router=noisy_topk"]
)");
  const auto spec = parse_study_file(dir.file("study.toml"), 4.0);
  EXPECT_EQ(spec.title, "A made study");
  const auto runs = expand_sweep(spec);
  ASSERT_EQ(runs.size(), 8u);  // 2 variants x 2 grid points x 2 seeds
  EXPECT_EQ(runs[0].directory, "plain__moe.k=1/seed1");
  EXPECT_EQ(runs[0].config_file, (fs::path(dir.path()) / "base.toml").lexically_normal().string());
  const auto& o = runs[4].overrides;  // noisy, k = 1, seed 1: study, variant, grid, then scale
  ASSERT_GE(o.size(), 4u);
  EXPECT_EQ(std::vector<std::string>(o.begin(), o.begin() + 4),
            (std::vector<std::string>{"moe.experts=4", "moe.router=noisy_topk", "moe.k=1", "train.seed=1"}));
  EXPECT_NE(std::find(o.begin(), o.end(), "train.steps=40"), o.end());   // 10 x 4
  EXPECT_NE(std::find(o.begin(), o.end(), "model.hidden=32"), o.end());  // 16 x 4^0.5
  write_file(dir.file("bad.toml"), "[study]\nname = \"x\"\n[[variant]]\nname = \"v\"\nconfg = \"typo.toml\"\n");
  EXPECT_THROW(parse_study_file(dir.file("bad.toml")), Error);
  EXPECT_THROW(parse_study_file(dir.file("study.toml"), -1.0), Error);
}

TEST(Sweep, UpcycledVariantStartsFromTheSameSeedsRunOfItsSource) {
  TempDir dir;
  write_file(dir.file("dense.toml"), "[moe]\nlayer = \"dense\"\nk = 2\nexpert_hidden = 12\n[train]\nsteps = 10\n");
  const auto study = [&](const std::string& variants) {
    write_file(dir.file("study.toml"), "[study]\nname = \"u\"\nseeds = 2\nbase = \"dense.toml\"\n" + variants);
    return dir.file("study.toml");
  };
  // Declared before its source, with a grid: the source run of each grid point and seed.
  auto spec = parse_study_file(study(R"(
[grid]
"model.hidden" = [16, 24]
[[variant]]
name = "sparse"
upcycle = { from = "dense", experts = 4 }
set = ["train.steps=5"]
baseline = "dense"
[[variant]]
name = "dense"
[[variant]]
name = "lstm"
baseline = "none"
)"));
  const auto runs = expand_sweep(spec);
  // The report compares each upcycled run with the dense run of its own grid point.
  ASSERT_EQ(runs.size(), 12u);
  EXPECT_EQ(runs[0].baseline, "dense__model.hidden=16");
  EXPECT_EQ(runs[4].baseline, "");
  EXPECT_EQ(runs.back().baseline, "none");
  const auto& run = runs[3];  // sparse, hidden 24, seed 2
  EXPECT_EQ(run.directory, "sparse__model.hidden=24/seed2");
  ASSERT_TRUE(run.upcycle.has_value());
  EXPECT_EQ(run.upcycle->from, "dense__model.hidden=24/seed2");
  EXPECT_EQ(run.upcycle->bank, "ffn");
  EXPECT_EQ(run.config_file, runs[7].config_file);  // the source's file and overrides
  EXPECT_EQ(run.overrides, runs[7].overrides);
  const auto config = sweep_run_config(run);
  EXPECT_EQ(config.get_string("moe.layer"), "moe");
  EXPECT_EQ(config.get_int("moe.experts"), 4);
  EXPECT_EQ(config.get_int("moe.expert_hidden"), 24);  // the dense FFN's width, k x 12
  EXPECT_EQ(config.get_int("model.hidden"), 24);
  EXPECT_EQ(config.get_int("train.steps"), 5);
  EXPECT_EQ(config.get_int("train.seed"), 2);
  EXPECT_FALSE(runs[7].upcycle.has_value());

  // --scale multiplies a key once: in the source's config, or where the upcycled variant sets it.
  write_file(dir.file("scaled.toml"), R"([study]
name = "s"
seeds = 1
base = "dense.toml"
[study.scale]
"train.steps" = 1.0
"model.hidden" = 0.5
[[variant]]
name = "dense"
set = ["model.hidden=16"]
[[variant]]
name = "sparse"
upcycle = { from = "dense", experts = 4 }
set = ["train.steps=5"]
)");
  const auto scaled = expand_sweep(parse_study_file(dir.file("scaled.toml"), 4.0));
  ASSERT_EQ(scaled.size(), 2u);
  EXPECT_EQ(sweep_run_config(scaled[0]).get_int("model.hidden"), 32);
  EXPECT_EQ(sweep_run_config(scaled[0]).get_int("train.steps"), 40);
  EXPECT_EQ(sweep_run_config(scaled[1]).get_int("model.hidden"), 32);  // the source's, not 64
  EXPECT_EQ(sweep_run_config(scaled[1]).get_int("train.steps"), 20);
  EXPECT_EQ(sweep_run_config(scaled[1]).get_int("moe.expert_hidden"), 24);

  // --variants keeps the source of an upcycled variant.
  keep_variants(spec, {"sparse"});
  ASSERT_EQ(spec.variants.size(), 2u);
  EXPECT_EQ(spec.variants[1].name, "dense");

  // Each mistake is one error naming it.
  const std::vector<std::pair<std::string, std::string>> mistakes = {
      {"[[variant]]\nname = \"a\"\nupcycle = { from = \"nowhere\", experts = 4 }\n", "not a variant"},
      {"[[variant]]\nname = \"d\"\n[[variant]]\nname = \"a\"\nupcycle = { from = \"d\", experts = 4 }\n"
       "[[variant]]\nname = \"b\"\nupcycle = { from = \"a\", experts = 4 }\n",
       "upcycled itself"},
      {"[[variant]]\nname = \"d\"\n[[variant]]\nname = \"a\"\nupcycle = { from = \"d\", experts = 0 }\n", ">= 1"},
      {"[[variant]]\nname = \"d\"\n[[variant]]\nname = \"a\"\nupcycle = { from = \"d\", experts = 4, bnk = \"ffn\" }\n",
       "unknown upcycle key bnk"},
      {"[[variant]]\nname = \"d\"\n[[variant]]\nname = \"a\"\nconfig = \"dense.toml\"\n"
       "upcycle = { from = \"d\", experts = 4 }\n",
       "both config and upcycle"},
      {"[[variant]]\nname = \"d\"\n[[variant]]\nname = \"a\"\nupcycle = { from = \"d\", experts = 4, bank = \"mlp\" }\n",
       "sweep variant a"},
      {"[[variant]]\nname = \"d\"\n[[variant]]\nname = \"a\"\nupcycle = \"d\"\n", "must be a table"},
      {"[[variant]]\nname = \"d\"\nbaseline = \"nowhere\"\n", "baseline = \"nowhere\" is not a variant"},
      {"[[variant]]\nname = \"d\"\nbaseline = \"d\"\n", "its own baseline"},
      {"[[variant]]\nname = \"d\"\nbaseline = 1\n", "baseline must be the name of another variant"},
      {"[[variant]]\nname = \"none\"\n", "a variant cannot be named none"},
  };
  for (const auto& [text, expected] : mistakes) {
    try {
      expand_sweep(parse_study_file(study(text)));
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find(expected), std::string::npos) << error.what();
    }
  }
}

TEST(Report, MadeSweepReportListsEveryVariantAndEveryPlotIsAPng) {
  MOELAB_SKIP_WITHOUT_GNUPLOT();
  TempDir dir;
  made_sweep(dir.path());
  // One run says which build trained it; the others come from builds before summaries said so.
  auto summary = nlohmann::json::parse(read_file(dir.file("b/seed1/summary.json")));
  summary["moelab_commit"] = "0123abcd";
  write_file(dir.file("b/seed1/summary.json"), summary.dump());
  const auto r = run_moelab("report '" + dir.path() + "' --out '" + dir.file("report") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto report = read_file(dir.file("report/report.md"));
  for (const char* text : {"| a |", "| b |", "boom", "moelab sweep ...", "info --system",
                           "(their build commit): `0123abcd` (1 run); `not recorded` (3 runs)\n"})
    EXPECT_NE(report.find(text), std::string::npos) << text;
  int plots = 0;
  for (const auto& entry : fs::directory_iterator(dir.file("report/plots"))) {
    if (entry.path().extension() != ".png") continue;
    ++plots;
    EXPECT_TRUE(is_png_file(entry.path().string())) << entry.path();
    EXPECT_NE(report.find("plots/" + entry.path().filename().string()), std::string::npos) << entry.path();
  }
  // Convergence (tokens, time), trade-off, and a heatmap and load bars per variant.
  EXPECT_EQ(plots, 7);
  EXPECT_TRUE(fs::exists(dir.file("report/results.csv")));
  EXPECT_TRUE(fs::exists(dir.file("report/results.json")));
}

TEST(Report, TranslationRunsNameTheirScoringAndAreDrawnByBleu) {
  MOELAB_SKIP_WITHOUT_GNUPLOT();
  TempDir dir;
  made_sweep(dir.path());
  // The made runs become translation runs: BLEU in the summary and at every evaluation.
  auto make_translation = [&](const std::string& run, const std::string& test_file) {
    auto summary = nlohmann::json::parse(read_file(dir.file(run + "/summary.json")));
    summary["valid_bleu"] = 30.0 - summary["valid_ppl"].get<double>();
    summary["test_bleu"] = 29.0 - summary["valid_ppl"].get<double>();
    summary["test_file"] = test_file;
    summary["test_bleu_line"] = "BLEU = 20.00 50.0/25.0/15.0/10.0 (BP = 1.000 ratio = 1.000 hyp_len = 120 ref_len = 118)";
    summary["bleu_signature"] = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0";
    summary["chrf_signature"] = "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0";
    write_file(dir.file(run + "/summary.json"), summary.dump());
    std::string metrics;
    for (int step = 10; step <= 30; step += 10)
      metrics += nlohmann::json({{"step", step}, {"valid_bleu", step * 0.5}, {"train_seconds", step * 0.1}}).dump() + "\n";
    write_file(dir.file(run + "/metrics.jsonl"), metrics);
  };
  for (const char* run : {"a/seed1", "a/seed2", "a/seed3", "b/seed1"}) make_translation(run, "data/test_2016.de");
  // b/seed2 was stopped on its way: the report says how far it got.
  fs::create_directories(dir.file("b/seed2"));
  write_file(dir.file("b/seed2/config.toml"), "[train]\nsteps = 40\n");
  write_file(dir.file("b/seed2/metrics.jsonl"), "{\"step\": 10, \"valid_bleu\": 3.5}\n{\"step\": 20, \"valid_bleu\": 7.25}\n"
                                                "{\"step\": 25, \"loss\": 4.0}\n");
  auto manifest = nlohmann::json::parse(read_file(dir.file("sweep.json")));
  manifest["runs"][4]["status"] = "interrupted";
  write_file(dir.file("sweep.json"), manifest.dump());
  auto alike = written_report(dir);
  EXPECT_NE(alike.find("on detokenised output: test source `data/test_2016.de` (118 reference tokens), beam 5, "
                       "length penalty α 0.6, at most 1.5 × source length + 10 tokens; BLEU signature "
                       "`nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`, chrF2 signature "
                       "`nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0`."),
            std::string::npos)
      << alike;
  EXPECT_NE(alike.find("- `b` seed 2: interrupted, at step 25 of 40, last validation valid BLEU 7.25 at step 20 (not "
                       "in the table)"),
            std::string::npos)
      << alike;
  // Curves of the figure translation is judged by, not of the perplexity its runs also report.
  EXPECT_NE(alike.find("The valid BLEU of each variant against tokens trained"), std::string::npos) << alike;
  EXPECT_EQ(alike.find("validation perplexity"), std::string::npos) << alike;

  // Another test set, or the same one decoded otherwise, is another setup.
  make_translation("b/seed1", "data/test_2017.de");
  write_file(dir.file("a/seed3/config.toml"), "[decode]\nbeam = 1\n");
  const auto unlike = written_report(dir);
  EXPECT_NE(unlike.find("the runs were not scored alike"), std::string::npos) << unlike;
  EXPECT_NE(unlike.find("- 2 runs: test source `data/test_2016.de` (118 reference tokens), beam 5,"), std::string::npos)
      << unlike;
  EXPECT_NE(unlike.find("- 1 run: test source `data/test_2016.de` (118 reference tokens), beam 1,"), std::string::npos)
      << unlike;
  EXPECT_NE(unlike.find("- 1 run: test source `data/test_2017.de`"), std::string::npos) << unlike;
}

// A study that spans sessions may land on other machines: the report names what timed each run and
// warns when speed figures come from different CPUs or thread counts.
TEST(Report, SpeedFiguresNameTheCpuAndThreadsThatTimedThem) {
  MOELAB_SKIP_WITHOUT_GNUPLOT();
  TempDir dir;
  made_sweep(dir.path());
  auto timed = [&](const std::string& run, int threads, const std::string& cpu) {
    auto summary = nlohmann::json::parse(read_file(dir.file(run + "/summary.json")));
    summary["threads"] = threads;
    summary["device"] = "cpu";
    if (cpu.empty()) summary.erase("cpu"); else summary["cpu"] = cpu;
    write_file(dir.file(run + "/summary.json"), summary.dump());
  };
  for (const char* run : {"a/seed1", "a/seed2", "a/seed3", "b/seed1"}) timed(run, 2, "Made CPU (AVX2)");
  const auto alike = written_report(dir);
  EXPECT_NE(alike.find("Speed figures (tokens/s, s/epoch, µs/token, latency) are each run's own measurement: 2 threads on "
                       "Made CPU (AVX2)."),
            std::string::npos)
      << alike;
  EXPECT_EQ(alike.find("timed on different machines"), std::string::npos) << alike;

  timed("a/seed3", 1, "Made CPU (AVX2)");
  timed("b/seed1", 2, "");
  const auto unlike = written_report(dir);
  EXPECT_NE(unlike.find("**the runs were timed on different machines or thread counts, so their speed figures do not "
                        "compare**"),
            std::string::npos)
      << unlike;
  EXPECT_NE(unlike.find("- 2 runs: 2 threads on Made CPU (AVX2)"), std::string::npos) << unlike;
  EXPECT_NE(unlike.find("- 1 run: 1 thread on Made CPU (AVX2)"), std::string::npos) << unlike;
  EXPECT_NE(unlike.find("- 1 run: 2 threads on a CPU the run did not record"), std::string::npos) << unlike;
}

TEST(Report, OneWindowRunSaysWhyFiguresAreMissingAndAwkwardPathsStayPaths) {
  MOELAB_SKIP_WITHOUT_GNUPLOT();
  // A run that logged and evaluated once: no one-dot convergence plot and no one-column heatmap,
  // but a line saying why. The output directory holds a quote, a $(...) and a space: the shell
  // commands that run gnuplot must treat it as a path, not as code.
  TempDir dir;
  const auto run = dir.file("run");
  fs::create_directories(run);
  write_file(run + "/config.toml", "");
  write_file(run + "/summary.json", nlohmann::json({{"valid_ppl", 9.0},
                                                    {"params_total", 100},
                                                    {"params_active_per_token", 50},
                                                    {"tokens_per_step", 10},
                                                    {"moe_layers", {{{"expert_load", {0.5, 0.5}}}}}})
                                        .dump());
  write_file(run + "/metrics.jsonl",
             nlohmann::json({{"step", 5}, {"loss", 2.0}, {"moe_layers", {{{"expert_load", {0.5, 0.5}}}}}}).dump() + "\n" +
                 nlohmann::json({{"step", 5}, {"valid_ppl", 9.0}}).dump() + "\n");
  const auto out = dir.file("it's $(touch pwned) \"x\"");
  const auto r = run_moelab("report " + shell_quote(run) + " --out " + shell_quote(out));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(dir.file("pwned")));
  EXPECT_FALSE(fs::exists("pwned"));
  const auto report = read_file(out + "/report.md");
  EXPECT_NE(report.find("Not drawn: no run has more than 1 evaluation"), std::string::npos) << report;
  EXPECT_NE(report.find("Not drawn: the run logged routing over a single window"), std::string::npos) << report;
  EXPECT_FALSE(fs::exists(out + "/plots/convergence_tokens.png"));
  EXPECT_TRUE(fs::exists(out + "/plots/load_bars_run.png") || report.find("load_bars_") != std::string::npos);
  for (const auto& entry : fs::directory_iterator(out + "/plots"))
    if (entry.path().extension() == ".png") {
      EXPECT_TRUE(is_png_file(entry.path().string())) << entry.path();
    }
}

TEST(Report, VariantsOverThreeExpertCountsGetTheScalingFigureWithBaselinesAsLines) {
  MOELAB_SKIP_WITHOUT_GNUPLOT();
  TempDir dir;
  nlohmann::json runs = nlohmann::json::array();
  // (variant, experts, valid ppl of seeds 1 and 2); experts 0 = no MoE layer.
  const std::vector<std::tuple<std::string, int, double, double>> made = {
      {"lstm", 0, 50, 52}, {"moe_64", 64, 40, 44}, {"moe_4", 4, 48, 46}, {"moe_16", 16, 45, 45}};
  for (const auto& [name, experts, first, second] : made) {
    int seed = 0;
    for (const double ppl : {first, second}) {
      const auto run_dir = name + "/seed" + std::to_string(++seed);
      made_run(dir.file(run_dir), ppl, 1000, {0.5, 0.5});
      auto summary = nlohmann::json::parse(read_file(dir.file(run_dir + "/summary.json")));
      summary["tokens_per_s"] = 1000.0 / (1 + experts);
      summary["peak_rss_mb"] = 100.0 + experts;
      if (experts == 0)
        summary.erase("moe_layers");
      else
        summary["moe_layers"][0]["experts"] = experts;
      write_file(dir.file(run_dir + "/summary.json"), summary.dump());
      runs.push_back({{"variant", name}, {"seed", seed}, {"directory", run_dir}, {"status", "finished"}});
    }
  }
  write_file(dir.file("sweep.json"), nlohmann::json({{"title", "scaling"}, {"seeds", 2}, {"runs", runs}}).dump());
  const auto r = run_moelab("report '" + dir.path() + "' --out '" + dir.file("report") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(is_png_file(dir.file("report/plots/scaling.png")));
  EXPECT_NE(read_file(dir.file("report/report.md")).find("plots/scaling.png"), std::string::npos);
  // The MoE variants in order of experts, each with mean, std, min and max of every panel's figure.
  std::istringstream data(read_file(dir.file("report/plots/data/scaling.dat")));
  std::vector<std::vector<double>> rows;
  for (std::string line; std::getline(data, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line.substr(line.find('"', 1) + 1));
    std::vector<double> row;
    for (double x; fields >> x;) row.push_back(x);
    rows.push_back(row);
  }
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0][0], 4);
  EXPECT_EQ(rows[1][0], 16);
  EXPECT_EQ(rows[2][0], 64);
  EXPECT_DOUBLE_EQ(rows[2][1], 42);                // mean ppl of 40 and 44
  EXPECT_NEAR(rows[2][2], std::sqrt(8.0), 1e-12);  // their sample std
  EXPECT_EQ(rows[2][3], 40);
  EXPECT_EQ(rows[2][4], 44);
  EXPECT_DOUBLE_EQ(rows[0][5], 200);  // tokens/s of moe_4
  EXPECT_DOUBLE_EQ(rows[1][9], 116);  // peak memory of moe_16
}

TEST(Report, ModelsWithSeveralMoELayersGetAPerLayerTableAndFirstAndLastLayerHeatmaps) {
  MOELAB_SKIP_WITHOUT_GNUPLOT();
  TempDir dir;
  nlohmann::json runs = nlohmann::json::array();
  for (int seed = 1; seed <= 2; ++seed) {
    const auto run_dir = "t/seed" + std::to_string(seed);
    const std::string path = dir.path() + "/" + run_dir;
    fs::create_directories(path);
    write_file(path + "/config.toml", "");
    nlohmann::json layers = nlohmann::json::array();
    for (int layer = 0; layer < 3; ++layer)
      layers.push_back({{"name", fmt::format("blocks.{}.moe", 2 * layer + 1)},
                        {"expert_load", {0.5, 0.5}},
                        {"load_cv", 0.1 * (layer + 1) + 0.01 * seed},
                        {"dropped_frac", 0.0},
                        {"routing_entropy", 0.6 + 0.1 * seed},
                        {"input_rms", 0.05 * (layer + 1)}});
    write_file(path + "/summary.json",
               nlohmann::json({{"valid_ppl", 10.0 + seed}, {"params_total", 100}, {"moe_layers", layers}}).dump());
    std::string metrics;
    for (int step = 10; step <= 20; step += 10) {
      metrics += nlohmann::json({{"step", step}, {"loss", 5.0}, {"moe_layers", layers}}).dump() + "\n";
      metrics += nlohmann::json({{"step", step}, {"valid_ppl", 30.0 - step}, {"train_seconds", step * 0.1}}).dump() + "\n";
    }
    write_file(path + "/metrics.jsonl", metrics);
    runs.push_back({{"variant", "t"}, {"seed", seed}, {"directory", run_dir}, {"status", "finished"}});
  }
  write_file(dir.file("sweep.json"), nlohmann::json({{"title", "layers"}, {"seeds", 2}, {"runs", runs}}).dump());
  const auto r = run_moelab("report '" + dir.path() + "' --out '" + dir.file("report") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto report = read_file(dir.file("report/report.md"));
  EXPECT_NE(report.find("Load balance of every MoE layer"), std::string::npos);
  // Layer 3 (blocks.5.moe) of seeds 1 and 2: CV 0.31 and 0.32.
  EXPECT_NE(report.find("| t | blocks.5.moe | 0.315 ± 0.007 |"), std::string::npos) << report;
  EXPECT_NE(report.find("| t | blocks.1.moe |"), std::string::npos);
  // Layer 3: entropy 0.7 and 0.8 over the seeds, input RMS 0.15 in both.
  EXPECT_NE(report.find("| 0.75 ± 0.07 | 0.150 |\n"), std::string::npos) << report;
  EXPECT_TRUE(fs::exists(dir.file("report/plots/load_heatmap_t_layer0.png")));
  EXPECT_TRUE(fs::exists(dir.file("report/plots/load_heatmap_t_layer2.png")));
  EXPECT_FALSE(fs::exists(dir.file("report/plots/load_heatmap_t_layer1.png")));
}

TEST(SweepCli, TinySweepTrainsSkipsFinishedResumesKilledAndRecordsFailures) {
  MOELAB_SKIP_WITHOUT_GNUPLOT();
  TempDir dir;
  make_corpus(dir.file("corpus"));
  auto config_text = [&](const std::string& router, double load) {
    return fmt::format(
        "[data]\ncorpus = \"{}\"\n[model]\nembed = 16\nhidden = 16\n[moe]\nexperts = 4\nk = 2\nexpert_hidden = 16\n"
        "router = \"{}\"\n[moe.balance]\nload = {}\n[train]\nbatch = 4\nbptt = 8\nsteps = 6\nthreads = 1\n"
        "checkpoint_every = 3\nwarmup = 0\nlog_every = 2\neval_every = 3\n",
        dir.file("corpus"), router, load);
  };
  write_file(dir.file("noisy.toml"), config_text("noisy_topk", 0.1));
  write_file(dir.file("mask.toml"), config_text("topk_mask", 0.0));
  // Valid as a config, refused when the layer is built: the load loss needs noisy gates.
  write_file(dir.file("broken.toml"), config_text("topk", 0.1));
  const auto out = dir.file("sweep");

  // A run killed after its first checkpoint: the sweep must resume it, not start it again.
  SweepSpec spec = sweep_from_configs({dir.file("noisy.toml"), dir.file("mask.toml")});
  spec.seeds = 2;
  const auto runs = expand_sweep(spec);
  {
    Config config = Config::from_toml_file(runs[0].config_file);
    for (const auto& assignment : runs[0].overrides) config.apply_override(assignment);
    TrainRequest request{config, out + "/" + runs[0].directory, false, false, true, /*stop_after_step=*/3};
    ASSERT_FALSE(train_model(request).finished);
  }

  const std::string configs = " --config '" + dir.file("noisy.toml") + "' --config '" + dir.file("mask.toml") + "'";
  const auto first = run_moelab("sweep" + configs + " --seeds 2 --jobs 2 --out '" + out + "'");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  auto manifest = nlohmann::json::parse(read_file(out + "/sweep.json"));
  ASSERT_EQ(manifest["runs"].size(), 4u);
  EXPECT_EQ(manifest["variants"], nlohmann::json({"noisy", "mask"}));
  for (const auto& run : manifest["runs"]) {
    EXPECT_EQ(run["status"], "finished") << run.dump();
    EXPECT_TRUE(fs::exists(out + "/" + run["directory"].get<std::string>() + "/summary.json"));
  }
  EXPECT_TRUE(manifest["runs"][0]["resumed"].get<bool>());
  EXPECT_FALSE(manifest["runs"][1]["resumed"].get<bool>());
  EXPECT_EQ(nlohmann::json::parse(read_file(out + "/noisy/seed1/summary.json"))["steps"], 6);

  // Again: everything is finished, nothing trains.
  const auto second = run_moelab("sweep" + configs + " --seeds 2 --jobs 2 --out '" + out + "'");
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("0 trained now, 4 were already finished"), std::string::npos) << second.output;
  // Part of the sweep again (--variants): the manifest keeps the other variant's runs for the report.
  const auto part = run_moelab("sweep" + configs + " --variants mask --seeds 2 --jobs 2 --out '" + out + "'");
  ASSERT_EQ(part.exit_code, 0) << part.output;
  EXPECT_NE(part.output.find("2 runs (1 variants x 2 seeds), 2 already finished"), std::string::npos) << part.output;
  manifest = nlohmann::json::parse(read_file(out + "/sweep.json"));
  ASSERT_EQ(manifest["runs"].size(), 4u) << manifest.dump();
  EXPECT_EQ(manifest["variants"], nlohmann::json({"noisy", "mask"}));
  EXPECT_EQ(manifest["runs"][0]["directory"], "noisy/seed1");
  EXPECT_EQ(manifest["runs"][3]["status"], "finished");

  // A failing variant is recorded and does not stop the others; the exit code says it failed.
  const auto out2 = dir.file("sweep2");
  const auto failing =
      run_moelab("sweep --config '" + dir.file("broken.toml") + "' --config '" + dir.file("mask.toml") +
                 "' --seeds 1 --jobs 1 --out '" + out2 + "'");
  EXPECT_NE(failing.exit_code, 0);
  manifest = nlohmann::json::parse(read_file(out2 + "/sweep.json"));
  EXPECT_EQ(manifest["runs"][0]["status"], "failed");
  EXPECT_NE(manifest["runs"][0]["error"].get<std::string>().find("needs noisy gates"), std::string::npos)
      << manifest.dump();
  EXPECT_EQ(manifest["runs"][1]["status"], "finished");
  EXPECT_TRUE(fs::exists(out2 + "/broken/seed1/error.txt"));

  // The report of the tiny sweep: every variant listed, every plot a PNG.
  const auto report = run_moelab("report '" + out + "'");
  ASSERT_EQ(report.exit_code, 0) << report.output;
  const auto text = read_file(out + "/report.md");
  for (const char* variant : {"| noisy |", "| mask |"}) EXPECT_NE(text.find(variant), std::string::npos) << variant;
  for (const char* plot : {"convergence_tokens.png", "convergence_time.png", "tradeoff.png", "load_heatmap_noisy.png",
                           "load_bars_mask.png"})
    EXPECT_TRUE(is_png_file(out + "/plots/" + plot)) << plot;
}

// SIGTERM to a sweep (or Ctrl-C): it starts nothing more, passes the signal to its running runs,
// each checkpoints the step it is on and stops; the manifest says "interrupted", not failed, and the
// same command again resumes them to the end.
namespace {

// A sweep of one tiny run long enough (a few seconds) for a signal to arrive mid-run, with
// checkpoints far apart, so only a stop writes one.
struct SignalledSweep {
  TempDir dir;
  std::string out, run, config;
  SignalledSweep() {
    make_corpus(dir.file("corpus"));
    config = dir.file("tiny.toml");
    write_file(config, fmt::format("[data]\ncorpus = \"{}\"\n[model]\nembed = 16\nhidden = 16\n[moe]\nexperts = 4\n"
                                   "k = 2\nexpert_hidden = 16\n[train]\nbatch = 4\nbptt = 8\nsteps = 3000\nthreads = 1\n"
                                   "checkpoint_every = 1000000\nwarmup = 0\nlog_every = 1\neval_every = 0\n",
                                   dir.file("corpus")));
    out = dir.file("sweep");
    run = out + "/tiny/seed1";
  }
  std::string command() const { return "sweep --config " + moelab::testing::sq(config) + " --seeds 1 --out " + moelab::testing::sq(out); }
  // Starts the sweep in the background (output to sweep.log) and returns once its run has logged a
  // step past `after_step`, i.e. has its handlers in place.
  pid_t start(int64_t after_step = 0) {
    const std::vector<std::string> args = {moelab::testing::moelab_executable(), "sweep", "--config", config,
                                           "--seeds", "1", "--out", out};
    const pid_t sweep = fork();
    if (sweep == 0) {
      const int log = open(dir.file("sweep.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(log, STDOUT_FILENO);
      dup2(log, STDERR_FILENO);
      std::vector<char*> argv;
      for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
    while (std::chrono::steady_clock::now() < deadline && last_logged_step() <= after_step)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return sweep;
  }
  int64_t last_logged_step() const {
    std::ifstream in(run + "/metrics.jsonl");
    int64_t step = 0;
    for (std::string line; std::getline(in, line);) {
      const auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (record.is_object() && record.contains("step")) step = record["step"].get<int64_t>();
    }
    return step;
  }
  std::string log() const { return read_file(dir.file("sweep.log")); }
  nlohmann::json manifest() const { return nlohmann::json::parse(read_file(out + "/sweep.json")); }
};

// The process whose parent is `parent` (the sweep's one run), read from /proc; -1 if none.
pid_t child_of(pid_t parent) {
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    const auto close = text.rfind(')');  // the command name may hold spaces and parentheses
    if (close == std::string::npos) continue;
    std::istringstream fields(text.substr(close + 2));
    char state = 0;
    pid_t ppid = 0;
    fields >> state >> ppid;
    if (ppid == parent) return static_cast<pid_t>(std::stol(name));
  }
  return -1;
}

// Whether `pid` has ended (gone, or a zombie nobody reaps: a container's init may not).
bool has_ended(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  return text.empty() || close == std::string::npos || text.compare(close + 2, 1, "Z") == 0;
}

}  // namespace

TEST(SweepCli, SigtermStopsRunsAtACheckpointAndTheSameCommandResumesThem) {
  SignalledSweep sweep;
  const pid_t pid = sweep.start();
  ASSERT_GT(pid, 0);
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << "status " << status << "\n" << sweep.log();
  EXPECT_NE(sweep.log().find("sweep stopped by SIGTERM"), std::string::npos) << sweep.log();
  auto manifest = sweep.manifest();
  ASSERT_EQ(manifest["runs"].size(), 1u);
  EXPECT_EQ(manifest["runs"][0]["status"], "interrupted") << manifest.dump();
  EXPECT_NE(manifest["runs"][0]["error"].get<std::string>().find("stopped by SIGTERM after step"), std::string::npos)
      << manifest.dump();
  EXPECT_FALSE(fs::exists(sweep.run + "/summary.json"));
  const auto stopped = find_checkpoint(sweep.run + "/checkpoint.pt");
  ASSERT_TRUE(stopped.has_value()) << "no checkpoint although none was due before step 3000";
  EXPECT_GT(stopped->meta.step, 0);
  EXPECT_LT(stopped->meta.step, 3000);

  const auto again = run_moelab(sweep.command());
  ASSERT_EQ(again.exit_code, 0) << again.output;
  manifest = sweep.manifest();
  EXPECT_EQ(manifest["runs"][0]["status"], "finished") << manifest.dump();
  EXPECT_TRUE(manifest["runs"][0]["resumed"].get<bool>());
  const auto summary = nlohmann::json::parse(read_file(sweep.run + "/summary.json"));
  EXPECT_EQ(summary["steps"].get<int64_t>(), 3000);
  // Only the steps after the checkpoint were trained again (at most 4 x 8 tokens each: the corpus's
  // last window is shorter).
  const auto trained_now = summary["tokens_trained_this_session"].get<int64_t>();
  EXPECT_GT(trained_now, 0);
  EXPECT_LE(trained_now, (3000 - stopped->meta.step) * 4 * 8);
}

TEST(SweepCli, RunsSignalledTogetherWithTheSweepOrOrphanedByItStillCheckpoint) {
  SignalledSweep sweep;
  // A batch system's preemption signals every process of the job: the run gets SIGTERM from it and
  // again from the sweep a moment later, and must still checkpoint (the second copy is the same stop).
  // Here the second copy is a SIGINT sent straight after: a second SIGTERM pending beside the first
  // would merge with it in the kernel, a SIGINT is delivered on its own, while the run still works.
  pid_t pid = sweep.start();
  ASSERT_GT(pid, 0);
  pid_t run = child_of(pid);
  ASSERT_GT(run, 0);
  ASSERT_EQ(kill(run, SIGTERM), 0);
  ASSERT_EQ(kill(run, SIGINT), 0);
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << "status " << status << "\n" << sweep.log();
  auto manifest = sweep.manifest();
  EXPECT_EQ(manifest["runs"][0]["status"], "interrupted") << manifest.dump() << sweep.log();
  const auto first = find_checkpoint(sweep.run + "/checkpoint.pt");
  ASSERT_TRUE(first.has_value()) << "the run died without its checkpoint\n" << sweep.log();

  // A sweep that dies without a word (SIGKILL, a lost terminal): its run learns of it, checkpoints
  // and stops instead of training on unwatched.
  pid = sweep.start(first->meta.step);
  ASSERT_GT(pid, 0);
  run = child_of(pid);
  ASSERT_GT(run, 0);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(1);
  while (std::chrono::steady_clock::now() < deadline && !has_ended(run))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(has_ended(run)) << "the run trains on after its sweep died";
  const auto second = find_checkpoint(sweep.run + "/checkpoint.pt");
  ASSERT_TRUE(second.has_value());
  EXPECT_GT(second->meta.step, first->meta.step) << "the orphaned run stopped without a checkpoint";
  EXPECT_LT(second->meta.step, 3000);
}

TEST(SweepCli, UpcycledRunsTrainAfterTheirSourceAndFailWithIt) {
  MOELAB_SKIP_WITHOUT_GNUPLOT();
  TempDir dir;
  make_corpus(dir.file("corpus"));
  fs::create_directories(dir.file("empty"));
  for (const char* split : {"train.txt", "valid.txt", "test.txt"}) write_file(dir.file("empty") + "/" + split, "");
  // A dense Transformer of two blocks: upcycled, both become MoE blocks.
  write_file(dir.file("dense.toml"),
             fmt::format("[data]\ncorpus = \"{}\"\n[model]\narch = \"transformer\"\nhidden = 16\nheads = 2\n"
                         "layers = 2\ncontext = 8\nffn_hidden = 24\nsoftmax = \"full\"\n[moe]\nexperts = 0\n"
                         "[train]\nbatch = 4\nsteps = 6\nthreads = 1\nwarmup = 0\nlog_every = 2\neval_every = 3\n",
                         dir.file("corpus")));
  // The upcycled variants come first: they must wait for their sources, not fail for want of them.
  write_file(dir.file("study.toml"), fmt::format(R"([study]
name = "u"
seeds = 1
base = "dense.toml"
[[variant]]
name = "sparse"
upcycle = {{ from = "dense", experts = 4, bank = "ffn" }}
set = ["train.steps=4"]
baseline = "dense"
[[variant]]
name = "orphan"
upcycle = {{ from = "unreadable", experts = 4 }}
[[variant]]
name = "dense"
[[variant]]
name = "unreadable"
set = ["data.corpus={}"]
)",
                                                 dir.file("empty")));
  const auto out = dir.file("sweep");
  const auto first = run_moelab("sweep --study '" + dir.file("study.toml") + "' --jobs 2 --out '" + out + "'");
  EXPECT_NE(first.exit_code, 0) << first.output;  // unreadable and orphan failed
  auto manifest = nlohmann::json::parse(read_file(out + "/sweep.json"));
  std::map<std::string, nlohmann::json> by_directory;
  for (const auto& run : manifest["runs"]) by_directory[run["directory"].get<std::string>()] = run;
  EXPECT_EQ(by_directory["dense/seed1"]["status"], "finished");
  EXPECT_EQ(by_directory["sparse/seed1"]["status"], "finished") << by_directory["sparse/seed1"].dump();
  EXPECT_EQ(by_directory["sparse/seed1"]["upcycle"]["from"], "dense/seed1");
  EXPECT_EQ(by_directory["sparse/seed1"].value("baseline", ""), "dense");
  EXPECT_EQ(by_directory["unreadable/seed1"]["status"], "failed");
  EXPECT_EQ(by_directory["orphan/seed1"]["status"], "failed");
  EXPECT_NE(by_directory["orphan/seed1"]["error"].get<std::string>().find("its source run unreadable/seed1 failed"),
            std::string::npos)
      << by_directory["orphan/seed1"].dump();
  // Upcycled from the finished dense run (step 6), then trained its own 4 steps as an MoE model.
  const auto upcycle = nlohmann::json::parse(read_file(out + "/sparse/seed1/upcycle.json"));
  EXPECT_EQ(upcycle["source_step"], 6);
  EXPECT_NEAR(upcycle["valid_ppl_upcycled"].get<double>(), upcycle["valid_ppl_source"].get<double>(),
              1e-3 * upcycle["valid_ppl_source"].get<double>());
  const auto summary = nlohmann::json::parse(read_file(out + "/sparse/seed1/summary.json"));
  EXPECT_EQ(summary["steps"], 4);
  EXPECT_EQ(summary["moe_layers"].size(), 2u);
  EXPECT_EQ(upcycle["reconstruction"].size(), 2u);  // per block
  const auto config = Config::from_toml_file(out + "/sparse/seed1/config.toml");
  EXPECT_EQ(config.get_int("moe.experts"), 4);
  EXPECT_EQ(config.get_int("moe.expert_hidden"), 24);
  // The report measures the upcycled variant against the baseline the study names, not the first variant.
  ASSERT_EQ(run_moelab("report '" + out + "'").exit_code, 0);
  EXPECT_NE(read_file(out + "/report.md").find("| sparse | 1 | dense (1 seed, "), std::string::npos)
      << read_file(out + "/report.md");

  // Only the upcycled variant again: its source is kept and both are finished, so nothing trains.
  const auto again = run_moelab("sweep --study '" + dir.file("study.toml") + "' --variants sparse --out '" + out + "'");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("0 trained now, 2 were already finished"), std::string::npos) << again.output;
}
