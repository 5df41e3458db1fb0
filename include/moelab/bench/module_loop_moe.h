// The MoE layer as a newcomer writes it: one pair of Linear modules per expert and a loop that
// gathers each expert's tokens, runs its module and scatters the result back (the structure of the
// widely used Python port of Shazeer's layer). `moelab bench` times it next to the grouped layer;
// nothing else uses it.
//
// Shape legend: N tokens, D width, H expert hidden, E experts.
#pragma once
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>

#include "moelab/layers/moe_layer.h"

namespace moelab {

class ModuleLoopMoEImpl : public torch::nn::Module {
 public:
  explicit ModuleLoopMoEImpl(const MoELayerOptions& options);  // ffn experts, options.router()
  MoEOutput forward(const torch::Tensor& x);                     // x [N, D]

  MoELayerOptions options;
  std::shared_ptr<Router> router;
  torch::nn::ModuleList up{nullptr};    // E x Linear(D, H)
  torch::nn::ModuleList down{nullptr};  // E x Linear(H, D)
};
TORCH_MODULE(ModuleLoopMoE);

}  // namespace moelab
