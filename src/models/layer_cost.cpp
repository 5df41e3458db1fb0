#include "moelab/models/layer_cost.h"

#include <fmt/format.h>

#include "moelab/util/parameter_count.h"

namespace moelab {

int64_t lstm_flops(const torch::nn::LSTM& lstm) {
  const auto& o = lstm->options;
  const int64_t directions = o.bidirectional() ? 2 : 1;
  int64_t flops = 0;
  int64_t input = o.input_size();
  for (int64_t layer = 0; layer < o.num_layers(); ++layer) {
    flops += directions * 2 * 4 * o.hidden_size() * (input + o.hidden_size());
    input = directions * o.hidden_size();
  }
  return flops;
}

LayerCost dense_cost(const std::string& name, const torch::nn::Module& module, int64_t flops) {
  const int64_t params = count_parameters(module);
  return {name, params, params, flops};
}

LayerCost total_cost(const std::vector<LayerCost>& rows) {
  LayerCost total{"total", 0, 0, 0};
  for (const auto& row : rows) {
    total.params_total += row.params_total;
    total.params_active += row.params_active;
    total.flops += row.flops;
  }
  return total;
}

nlohmann::json cost_to_json(const std::vector<LayerCost>& rows) {
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& row : rows)
    layers.push_back({{"name", row.name},
                      {"params_total", row.params_total},
                      {"params_active_per_token", row.params_active},
                      {"flops_per_token", row.flops}});
  const auto total = total_cost(rows);
  return {{"layers", layers},
          {"params_total", total.params_total},
          {"params_active_per_token", total.params_active},
          {"flops_per_token", total.flops}};
}

std::string cost_table(const std::vector<LayerCost>& rows) {
  std::string out = fmt::format("{:<18} {:>14} {:>14} {:>16}\n", "layer", "params", "active/token", "FLOPs/token");
  auto line = [&](const LayerCost& row) {
    out += fmt::format("{:<18} {:>14} {:>14} {:>16}\n", row.name, row.params_total, row.params_active, row.flops);
  };
  for (const auto& row : rows) line(row);
  line(total_cost(rows));
  return out;
}

}  // namespace moelab
