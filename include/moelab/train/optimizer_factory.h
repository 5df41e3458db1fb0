// The optimizer a config asks for (train.optimizer: sgd, adam, adagrad, factored), over a model's
// parameters; the factored optimizer gets the expert bank's stacked tensors as their own group.
#pragma once
#include <torch/optim/optimizer.h>

#include <memory>

#include "moelab/config/config.h"
#include "moelab/models/lstm_language_model.h"

namespace moelab {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Config& config, LstmLanguageModel& model);

}  // namespace moelab
