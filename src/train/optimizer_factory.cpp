#include "moelab/train/optimizer_factory.h"

#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>

#include "moelab/train/factored_optimizer.h"
#include "moelab/train/param_group_options.h"

namespace moelab {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const Config& config, const std::vector<torch::Tensor>& all,
                                                        const std::vector<NamedMoELayer>& moe_layers) {
  std::vector<torch::Tensor> parameters;
  for (const auto& p : all)
    if (p.requires_grad()) parameters.push_back(p);
  const double lr = config.get_float("train.lr");
  const double weight_decay = config.get_float("train.weight_decay");
  const auto name = config.get_string("train.optimizer");
  if (name == "sgd")
    return std::make_unique<torch::optim::SGD>(
        parameters,
        torch::optim::SGDOptions(lr).momentum(config.get_float("train.momentum")).weight_decay(weight_decay));
  if (name == "factored") {
    // Stacked expert tensors in their own group, updated lazily per expert; the rest as usual.
    const FactoredOptions options = FactoredOptions(lr).weight_decay(weight_decay);
    std::vector<torch::Tensor> experts, rest;
    auto per_expert = [&](const torch::Tensor& p) {
      for (const auto& [name, moe] : moe_layers)
        if (moe->experts->is_per_expert(p)) return true;
      return false;
    };
    for (const auto& p : parameters) (per_expert(p) ? experts : rest).push_back(p);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(rest, std::make_unique<FactoredOptions>(options));
    if (!experts.empty())
      groups.emplace_back(experts, std::make_unique<FactoredOptions>(FactoredOptions(options).expert_stacked(true)));
    return std::make_unique<FactoredOptimizer>(std::move(groups), options);
  }
  if (name == "adamw") {
    // Decoupled weight decay (Loshchilov and Hutter 2019) on matrices only: biases, norm gains and
    // other vectors are not decayed, as is usual for Transformers.
    std::vector<torch::Tensor> matrices, vectors;
    for (const auto& p : parameters) (p.dim() >= 2 ? matrices : vectors).push_back(p);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    const auto options = torch::optim::AdamWOptions(lr).betas({0.9, config.get_float("train.beta2")});
    groups.emplace_back(matrices, std::make_unique<torch::optim::AdamWOptions>(
                                      torch::optim::AdamWOptions(options).weight_decay(weight_decay)));
    if (!vectors.empty())
      groups.emplace_back(vectors, std::make_unique<torch::optim::AdamWOptions>(
                                       torch::optim::AdamWOptions(options).weight_decay(0.0)));
    auto optimizer = std::make_unique<torch::optim::AdamW>(groups, options);
    keep_group_options(*optimizer, groups);
    return optimizer;
  }
  if (name == "adagrad")
    return std::make_unique<torch::optim::Adagrad>(parameters,
                                                   torch::optim::AdagradOptions(lr).weight_decay(weight_decay));
  return std::make_unique<torch::optim::Adam>(parameters,
                                              torch::optim::AdamOptions(lr).weight_decay(weight_decay));
}

}  // namespace moelab
