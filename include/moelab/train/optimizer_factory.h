// The optimizer a config asks for (train.optimizer: sgd, adam, adagrad, factored), over a model's
// parameters; the factored optimizer gets the expert bank's stacked tensors as their own group.
#pragma once
#include <torch/optim/optimizer.h>

#include <memory>

#include "moelab/config/config.h"
#include "moelab/models/language_model.h"

namespace moelab {

// Parameters that do not require a gradient (a frozen embedding table or base) are left out.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Config& config, const std::vector<torch::Tensor>& parameters,
                                                        const std::vector<NamedMoELayer>& moe_layers);
inline std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Config& config, LanguageModelImpl& model) {
  return make_optimizer(config, model.parameters(), model.moe_layers());
}

}  // namespace moelab
