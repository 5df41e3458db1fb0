// train.freeze: keeping parameters fixed by name pattern, for ST-MoE's fine-tuning variants (update
// only the non-expert parameters, or only the experts) and any other partial training.
#pragma once
#include <torch/nn/module.h>

#include <string>
#include <vector>

namespace moelab {

// Marks every parameter whose name matches a pattern as not requiring a gradient, so the optimizer
// never sees it. "experts" matches names containing "experts"; "!experts" matches names that do
// not. Returns the frozen names. Throws Error when a pattern matches nothing (naming a few real
// names) or when nothing would be left to train.
std::vector<std::string> freeze_parameters(torch::nn::Module& model, const std::vector<std::string>& patterns);

}  // namespace moelab
