// What each part of a model costs per token: parameters (total and active) and FLOPs. Computed from
// the modules' tensors, never typed in.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn/modules/rnn.h>

namespace moelab {

// One row of `moelab info`. "Active" parameters are those one token's forward pass uses: every
// parameter of the dense parts (embedding included, as is customary), the router and k experts of
// an MoE layer.
struct LayerCost {
  std::string name;
  int64_t params_total = 0;
  int64_t params_active = 0;
  int64_t flops = 0;  // 2 x multiply-adds per token at inference, matrix products only
};

// Matrix-product FLOPs per token of an LSTM stack (4 gates, input and recurrent; both directions
// of a bidirectional one).
int64_t lstm_flops(const torch::nn::LSTM& lstm);

// A dense part: every parameter active for every token.
LayerCost dense_cost(const std::string& name, const torch::nn::Module& module, int64_t flops);

LayerCost total_cost(const std::vector<LayerCost>& rows);  // name "total"
nlohmann::json cost_to_json(const std::vector<LayerCost>& rows);  // {"layers": [...], "params_total": ...}
std::string cost_table(const std::vector<LayerCost>& rows);       // aligned text table with a total row

}  // namespace moelab
