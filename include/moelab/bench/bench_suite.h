// `moelab bench`: every section of the ratio report, run in one process, as JSON rows and a
// markdown table per section.
#pragma once
#include <functional>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moelab/bench/layer_bench.h"
#include "moelab/config/config.h"

namespace moelab {

// Sections in the order they run. "model" comes first because peak RSS is a process-wide mark.
const std::vector<std::string>& bench_section_names();  // model, layer, banks, slow_paths, weak_scaling

struct BenchRequest {
  bool quick = false;                  // the layer rows with E <= 64 only (about two minutes on 2 cores)
  std::vector<std::string> sections;   // empty: all (or, with quick, "layer")
  // The layer rows' expert counts and k (empty: E = 8, 64, 256, 1024 or, with quick, 8 and 64; k = 1, 2, 4)
  std::vector<int64_t> layer_experts, layer_k;
  LayerBenchOptions layer;             // shape, timing, device
  Config model_config;                 // the language model of the "model" section
  std::optional<Config> transformer_config;  // the "transformer" section's model (float32 and bf16 rows)
  std::vector<Config> task_configs;  // the "task" section's runs, one row each (any model.task)
  std::function<void(const std::string&)> progress;  // called before each row, may be empty
  // Called after each row with every row so far (the CLI rewrites its JSON file), may be empty.
  std::function<void(const std::vector<nlohmann::json>&)> on_row;
};

struct BenchResult {
  std::vector<nlohmann::json> rows;
  std::string markdown;
};

// Throws moelab::Error for an unknown section (run_bench checks too; callers check before printing).
void check_bench_request(const BenchRequest& request);
BenchResult run_bench(const BenchRequest& request);

// One markdown table per case present in `rows`, columns chosen per case.
std::string bench_markdown(const std::vector<nlohmann::json>& rows);

}  // namespace moelab
