// The number of scalar parameters a module holds (its own and its submodules'), the one count that
// every parameter figure moelab reports is built from.
#pragma once
#include <torch/nn/module.h>

#include <cstdint>

namespace moelab {

int64_t count_parameters(const torch::nn::Module& module);

}  // namespace moelab
