// Aggregation of a sweep: run directories grouped into variants, and each figure of summary.json
// as mean, sample standard deviation and count over the variant's seeds.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moelab {

// One run directory as the report sees it.
struct RunRecord {
  std::string variant;
  int64_t seed = 0;
  std::string directory;  // absolute or relative to the working directory
  std::string status;     // finished, failed, running, pending
  std::string error;      // why it failed
  nlohmann::json summary;                // summary.json (null unless finished)
  std::vector<nlohmann::json> metrics;   // metrics.jsonl, one object per line
  // A run that continued another (`moelab upcycle`) starts where its source ended: the source's
  // training tokens and seconds, which its curves are drawn after. 0 for a run from scratch.
  double tokens_before = 0;
  double seconds_before = 0;
};

// Runs of SWEEP_DIR (from sweep.json, in its order) or of a single RUN_DIR (one variant named after
// the directory). Throws Error when the directory is neither.
std::vector<RunRecord> load_runs(const std::string& directory);

struct MetricStats {
  int64_t n = 0;
  double mean = 0;
  double std = 0;  // sample standard deviation (n - 1); 0 when n < 2
};

// Mean, sample std, n of the finite values (NaNs, i.e. absent figures, are left out).
MetricStats summarize(const std::vector<double>& values);

// A figure of a run's summary.json by name: top-level keys, or the first MoE layer's for
// load_cv, importance_cv, max_mean_load, dropped_frac. NaN when the run does not have it.
double summary_metric(const nlohmann::json& summary, const std::string& key);

// summary_metric, plus figures computed from the run's metrics log: train_load_cv (mean CV of
// load over the last quarter of training's logging windows, i.e. with the training noise on).
double run_metric(const RunRecord& run, const std::string& key);

struct ReportColumn {
  std::string key;    // summary_metric key
  std::string label;  // table header, with unit
  bool lower_is_better = true;
};

// Every column a report can show, in table order; a report drops those no run has.
const std::vector<ReportColumn>& report_columns();
// The column of `key`; nullptr when there is none.
const ReportColumn* report_column(const std::string& key);

struct VariantResult {
  std::string name;
  std::vector<const RunRecord*> finished;  // in seed order
  std::vector<const RunRecord*> unfinished;
  std::map<std::string, MetricStats> metrics;  // by column key, over finished runs
};

// Variants in first-seen order of `runs`.
std::vector<VariantResult> aggregate_runs(const std::vector<RunRecord>& runs);

// The markdown table: one row per variant, "mean ± std" per column (n in its own column), the best
// mean of each column in bold. Columns no variant has are dropped.
std::string results_markdown(const std::vector<VariantResult>& variants);

// The validation figure a run is judged by, most telling first: BLEU (translation, whose runs
// report a perplexity too), perplexity (language models), entity F1 or token accuracy (tagging),
// F1 and EM (span QA). The first one a run has is its headline.
const std::vector<std::string>& headline_validation_keys();

// Validation load balance of every MoE layer (mean ± std over seeds), for models with several MoE
// layers (the Transformer's blocks); "" when every model has at most one.
std::string moe_layers_markdown(const std::vector<VariantResult>& variants);
// Every variant against its baseline on one figure (`key`; its column says whether lower or higher
// is better, lower for a key that is not a column): the difference of means,
// its standard error, and whether the two sets of seeds are apart, i.e. the variant's worst seed
// beats the baseline's best (or the reverse). The baseline is the one `baselines` names for the
// variant (a study's `baseline = ...`; a row says "baseline not finished" while that has no finished
// runs), else the first variant that has finished runs (the study's, e.g. dense); `kNoBaseline`
// ("none") leaves the variant out of the table, for a model of another family that the first variant
// says nothing about. "" when no row is left.
inline constexpr const char* kNoBaseline = "none";
std::string comparison_markdown(const std::vector<VariantResult>& variants, const std::string& key,
                                const std::map<std::string, std::string>& baselines = {});
// The figures a report compares variants on, where runs have them: validation perplexity (language
// models), test BLEU (translation), test entity F1 (tagging), validation F1 (QA).
const std::vector<std::string>& headline_metrics();
// The same figures as CSV: variant, n, then key_mean, key_std for every column.
std::string results_csv(const std::vector<VariantResult>& variants);
// Variants (with their statistics) and every run (with its summary) as JSON.
nlohmann::json results_json(const std::vector<VariantResult>& variants);

}  // namespace moelab
