// The optimizer a config asks for (train.optimizer: sgd, adam, adagrad, factored), over a model's
// parameters; the factored optimizer gets the expert bank's stacked tensors as their own group.
#pragma once
#include <torch/optim/optimizer.h>

#include <memory>

#include "moelab/config/config.h"
#include "moelab/models/lstm_language_model.h"

namespace moelab {

// Parameters that do not require a gradient (a frozen embedding table or base) are left out.
// `moe` may be empty (no MoE layer).
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Config& config, const std::vector<torch::Tensor>& parameters,
                                                        const MoELayer& moe);
inline std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Config& config, LstmLanguageModel& model) {
  return make_optimizer(config, model->parameters(), model->moe);
}

}  // namespace moelab
