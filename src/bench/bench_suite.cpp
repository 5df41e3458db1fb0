#include "moelab/bench/bench_suite.h"

#include <fmt/format.h>

#include <algorithm>

#include "moelab/bench/attention_bench.h"
#include "moelab/bench/model_bench.h"
#include "moelab/bench/task_bench.h"
#include "moelab/dispatch/grouped_path.h"
#include "moelab/util/error.h"

namespace moelab {

namespace {

struct Column {
  const char* header;
  const char* key;
  const char* format;  // fmt spec for numbers; "" for integers and strings
};

// Columns per case; keys a row lacks print as "-".
// The model rows' columns; the Transformer's rows lead with their precision.
const std::vector<Column> kTrainStepColumns = {{"E", "experts", ""},
                                               {"k", "k", ""},
                                               {"bank", "bank", ""},
                                               {"step ms", "ms", "{:.1f}"},
                                               {"tokens/s", "tokens_per_s", "{:.0f}"},
                                               {"model GFLOP/s", "model_gflops", "{:.1f}"},
                                               {"sgemm GFLOP/s", "sgemm_gflops", "{:.1f}"},
                                               {"of sgemm", "fraction_of_sgemm", "{:.2f}"},
                                               {"peak RSS MB", "peak_rss_mb", "{:.0f}"},
                                               {"RSS before model MB", "baseline_rss_mb", "{:.0f}"},
                                               {"expected MB", "expected_mb", "{:.0f}"},
                                               {"(peak - before) / expected", "rss_over_expected", "{:.2f}"}};
const std::vector<Column> kEvalColumns = {{"E", "experts", ""},
                                          {"k", "k", ""},
                                          {"ms per window", "ms", "{:.1f}"},
                                          {"tokens/s", "tokens_per_s", "{:.0f}"},
                                          {"peak RSS MB", "peak_rss_mb", "{:.0f}"}};

std::vector<Column> with_precision(std::vector<Column> columns) {
  columns.insert(columns.begin(), Column{"precision", "precision", ""});
  return columns;
}

const std::vector<std::pair<std::string, std::vector<Column>>>& table_layouts() {
  static const std::vector<std::pair<std::string, std::vector<Column>>> layouts = {
      {"train_step", kTrainStepColumns},
      {"eval", kEvalColumns},
      {"transformer_train_step", with_precision(kTrainStepColumns)},
      {"transformer_eval", with_precision(kEvalColumns)},
      {"attention",
       {{"pairs", "pairs", ""},
        {"queries", "queries", ""},
        {"keys", "keys", ""},
        {"head width", "head_width", ""},
        {"attention_product ms", "ms", "{:.1f}"},
        {"torch::matmul ms", "matmul_ms", "{:.1f}"},
        {"speed-up", "speedup", "{:.2f}"}}},
      {"task_train_step",
       {{"task", "task", ""},
        {"arch", "arch", ""},
        {"precision", "precision", ""},
        {"E", "experts", ""},
        {"k", "k", ""},
        {"step ms", "ms", "{:.1f}"},
        {"tokens/step", "tokens_per_step", "{:.0f}"},
        {"tokens/s", "tokens_per_s", "{:.0f}"},
        {"model GFLOP/s", "model_gflops", "{:.1f}"},
        {"sgemm GFLOP/s", "sgemm_gflops", "{:.1f}"},
        {"of sgemm", "fraction_of_sgemm", "{:.2f}"},
        {"peak RSS MB", "peak_rss_mb", "{:.0f}"}}},
      {"layer",
       {{"E", "experts", ""},
        {"k", "k", ""},
        {"bank", "bank", ""},
        {"MoE ms", "ms", "{:.1f}"},
        {"dense ms", "dense_ms", "{:.1f}"},
        {"ratio vs dense", "ratio_vs_dense", "{:.2f}"},
        {"expert GFLOP/s", "gflops", "{:.1f}"},
        {"of sgemm", "fraction_of_sgemm", "{:.2f}"},
        {"MB moved", "bytes_moved_mb", "{:.0f}"},
        {"ms at copy bandwidth", "ms_at_bandwidth", "{:.1f}"}}},
      {"bank",
       {{"bank", "bank", ""},
        {"E", "experts", ""},
        {"k", "k", ""},
        {"params", "params_total", ""},
        {"dense hidden", "dense_hidden", ""},
        {"MoE ms", "ms", "{:.1f}"},
        {"dense ms", "dense_ms", "{:.1f}"},
        {"ratio vs dense", "ratio_vs_dense", "{:.2f}"}}},
      {"naive",
       {{"E", "experts", ""},
        {"k", "k", ""},
        {"naive ms", "ms", "{:.1f}"},
        {"grouped ms", "fast_ms", "{:.1f}"},
        {"naive / grouped", "ratio_vs_fast", "{:.2f}"},
        {"dense ms", "dense_ms", "{:.1f}"},
        {"naive / dense", "ratio_vs_dense", "{:.2f}"}}},
      {"module_loop",
       {{"E", "experts", ""},
        {"k", "k", ""},
        {"module loop ms", "ms", "{:.1f}"},
        {"grouped ms", "fast_ms", "{:.1f}"},
        {"loop / grouped", "ratio_vs_fast", "{:.2f}"},
        {"dense ms", "dense_ms", "{:.1f}"},
        {"loop / dense", "ratio_vs_dense", "{:.2f}"}}},
      {"weak_scaling",
       {{"E", "experts", ""},
        {"k", "k", ""},
        {"router", "router", ""},
        {"groups", "groups", ""},
        {"tokens", "tokens", ""},
        {"MoE ms", "ms", "{:.1f}"},
        {"us/token", "us_per_token", "{:.2f}"},
        {"vs first E", "ratio_vs_first", "{:.2f}"},
        {"dense ms", "dense_ms", "{:.1f}"},
        {"ratio vs dense", "ratio_vs_dense", "{:.2f}"},
        {"note", "skipped", ""}}},
      {"grouped_path",
       {{"E", "experts", ""},
        {"in", "in_width", ""},
        {"out", "out_width", ""},
        {"rows per expert (~)", "rows_per_expert", ""},
        {"product", "product", ""},
        {"chosen", "chosen", ""},
        {"loop ms", "loop_ms", "{:.2f}"},
        {"parallel ms", "parallel_ms", "{:.2f}"},
        {"bmm ms", "bmm_ms", "{:.2f}"},
        {"onednn ms", "onednn_ms", "{:.2f}"},
        {"onednn transposed ms", "onednn_transposed_ms", "{:.2f}"},
        {"streaming ms", "streaming_ms", "{:.2f}"}}},
  };
  return layouts;
}

std::string cell(const nlohmann::json& row, const Column& column) {
  if (!row.contains(column.key)) return "-";
  const auto& value = row[column.key];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number_integer()) return std::to_string(value.get<int64_t>());
  if (value.is_number()) return fmt::format(fmt::runtime(column.format[0] ? column.format : "{}"), value.get<double>());
  return value.dump();
}

bool wants(const BenchRequest& request, const std::string& section) {
  if (request.sections.empty()) return !request.quick || section == "layer";
  return std::find(request.sections.begin(), request.sections.end(), section) != request.sections.end();
}

}  // namespace

const std::vector<std::string>& bench_section_names() {
  static const std::vector<std::string> names = {"model", "transformer", "task", "attention", "layer", "banks", "slow_paths", "weak_scaling"};
  return names;
}

std::string bench_markdown(const std::vector<nlohmann::json>& rows) {
  std::string out;
  for (const auto& [case_name, columns] : table_layouts()) {
    std::vector<const nlohmann::json*> mine;
    for (const auto& row : rows)
      if (row.value("case", "") == case_name) mine.push_back(&row);
    if (mine.empty()) continue;
    out += fmt::format("\n### {}\n\n|", case_name);
    std::string rule = "|";
    for (const auto& column : columns) {
      out += fmt::format(" {} |", column.header);
      rule += column.format[0] || std::string(column.key) == "experts" || std::string(column.key) == "k" ? "---:|"
                                                                                                        : "---|";
    }
    out += "\n" + rule + "\n";
    for (const auto* row : mine) {
      out += "|";
      for (const auto& column : columns) out += fmt::format(" {} |", cell(*row, column));
      out += "\n";
    }
  }
  return out;
}

void check_bench_request(const BenchRequest& request) {
  for (const auto& section : request.sections)
    if (std::find(bench_section_names().begin(), bench_section_names().end(), section) == bench_section_names().end())
      fail("unknown bench section '{}' (known: {})", section, fmt::join(bench_section_names(), ", "));
}

BenchResult run_bench(const BenchRequest& request) {
  check_bench_request(request);
  BenchResult result;
  const auto note = [&](const std::string& what) {
    if (request.progress) request.progress(what);
  };
  // Every finished row goes to on_row at once, so a long run killed late keeps what it measured.
  struct Rows {
    BenchResult& result;
    const BenchRequest& request;
    void push_back(const nlohmann::json& row) {
      result.rows.push_back(row);
      if (request.on_row) request.on_row(result.rows);
    }
  } rows{result, request};
  const auto& layer = request.layer;
  if (wants(request, "model")) {
    note("model: training step and evaluation of the configured language model");
    for (auto& row : bench_language_model(request.model_config, layer.timing, 2048, "", layer.profile_path))
      rows.push_back(row);
  }
  if (wants(request, "transformer") && request.transformer_config) {
    // The same Transformer in float32 and in bf16 (selective precision), side by side; the sgemm
    // reference rate is float32 in both rows.
    for (const char* precision : {"float32", "bf16"}) {
      note(fmt::format("transformer: training step and evaluation, {}", precision));
      auto config = *request.transformer_config;
      config.apply_override(std::string("train.precision=") + precision);
      for (auto& row : bench_language_model(config, layer.timing, 2048, "transformer_", layer.profile_path))
        rows.push_back(row);
    }
  }
  // Only on request: it needs a config of the task to measure (--task-config).
  if (!request.task_configs.empty() && wants(request, "task")) {
    for (const auto& config : request.task_configs) {
      note(fmt::format("task: a training step of {} ({})", config.get_string("model.task"), config.get_string("model.arch")));
      for (auto& row : bench_task_training(config, layer.timing, 2048, layer.profile_path)) rows.push_back(row);
    }
  }
  if (wants(request, "attention")) {
    note("attention: the plain kernel's products, direct against torch::matmul");
    for (auto& row : bench_attention_products(layer.timing)) rows.push_back(row);
  }
  if (wants(request, "layer")) {
    // The roofline is the CPU's (float32 sgemm, copy bandwidth): on a GPU the columns stay empty.
    const bool roofline_applies = layer.device.is_cpu();
    Roofline roofline;
    if (roofline_applies) {
      note("layer: the machine's sgemm rate and copy bandwidth");
      roofline.sgemm_gflops = sgemm_gflops(2048, layer.timing);
      roofline.copy_gbs = copy_bandwidth_gbs(layer.timing);
    }
    std::vector<int64_t> experts = request.layer_experts;
    if (experts.empty()) experts = request.quick ? std::vector<int64_t>{8, 64} : std::vector<int64_t>{8, 64, 256, 1024};
    const auto ks = request.layer_k.empty() ? std::vector<int64_t>{1, 2, 4} : request.layer_k;
    for (const int64_t e : experts)
      for (const int64_t k : ks) {
        note(fmt::format("layer: E = {}, k = {}", e, k));
        auto row = bench_moe_vs_dense(bench_layer_options(layer, e, k), layer, "layer");
        if (roofline_applies) add_roofline(row, roofline);
        rows.push_back(row);
      }
  }
  if (wants(request, "banks")) {
    for (const auto& bank : expert_bank_names()) {
      note(fmt::format("bank: {} (E = 64, k = 2)", bank));
      rows.push_back(bench_moe_vs_dense(bench_layer_options(layer, 64, 2, bank), layer, "bank"));
    }
  }
  if (wants(request, "slow_paths")) {
    for (const int64_t e : {8, 64}) {
      note(fmt::format("naive path and module loop: E = {}, k = 2", e));
      for (auto& row : bench_slow_paths(bench_layer_options(layer, e, 2), layer)) rows.push_back(row);
    }
  }
  if (wants(request, "weak_scaling")) {
    // Small experts (D = H = 256) so that E = 4096 fits with its gradients in a few GiB.
    LayerBenchOptions small = layer;
    small.dim = std::min<int64_t>(layer.dim, 256);
    small.expert_hidden = std::min<int64_t>(layer.expert_hidden, 256);
    note("weak scaling: E = 8 ... 4096, 128 token-slots per expert");
    for (auto& row : bench_weak_scaling({8, 64, 256, 1024, 4096}, 2, 128, 256, small)) rows.push_back(row);
  }
  // What kAuto measured and chose for every grouped-product shape the rows above ran.
  for (const auto& choice : grouped_path_choices()) {
    nlohmann::json row = {{"case", "grouped_path"},
                          {"experts", choice.shape.experts},
                          {"k", 0},
                          {"bank", "-"},
                          {"in_width", choice.shape.in_width},
                          {"out_width", choice.shape.out_width},
                          {"rows_per_expert", choice.shape.rows_bucket},
                          {"product", grouped_product_name(choice.shape.product)},
                          {"chosen", grouped_path_name(choice.path)},
                          {"dense_ms", 0.0},
                          {"ratio_vs_dense", 0.0}};
    for (const auto& [path, ms] : choice.measured_ms) {
      row[grouped_path_name(path) + "_ms"] = ms;
      if (path == choice.path) row["ms"] = ms;
    }
    rows.push_back(row);
  }
  result.markdown = bench_markdown(result.rows);
  return result;
}

}  // namespace moelab
