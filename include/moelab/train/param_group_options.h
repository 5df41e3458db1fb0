// LibTorch 2.x merges each parameter group's options with the optimizer's defaults field by field,
// keeping a field only where it differs from the options type's constructor default, and only for
// its own optimizer types: a group of our FactoredOptions gets the defaults whole, and an explicit
// value that equals the constructor default is replaced by the defaults'. LibTorch 1.13 keeps the
// group's options as given. Setting them back after construction gives both the 1.13 behaviour.
#pragma once
#include <torch/optim/optimizer.h>

#include <vector>

namespace moelab {

// `given`: the groups `optimizer` was constructed from, in the same order.
inline void keep_group_options(torch::optim::Optimizer& optimizer,
                               const std::vector<torch::optim::OptimizerParamGroup>& given) {
  auto& groups = optimizer.param_groups();
  for (size_t i = 0; i < given.size() && i < groups.size(); ++i)
    if (given[i].has_options()) groups[i].set_options(given[i].options().clone());
}

}  // namespace moelab
