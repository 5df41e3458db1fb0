#include "moelab/layers/dense_ffn.h"

#include <cmath>

#include "moelab/device/dropout.h"
#include "moelab/util/error.h"
#include "moelab/util/parameter_count.h"

namespace moelab {

DenseFfnImpl::DenseFfnImpl(const DenseFfnOptions& options_) : options(options_) {
  if (options.hidden_dim() < 1) fail("dense FFN hidden width must be >= 1, got {}", options.hidden_dim());
  if (options.hidden_layers() < 1) fail("dense FFN needs at least 1 hidden layer, got {}", options.hidden_layers());
  reset();
}

void DenseFfnImpl::reset() {
  // Not "in": LibTorch's archive format parses submodule names as TorchScript identifiers, and a
  // keyword there makes the checkpoint unreadable.
  const int64_t d = options.model_dim(), h = options.hidden_dim();
  up = register_module("up", torch::nn::Linear(d, h));
  // Registered only when deep, so the usual FFN's checkpoints keep their keys.
  if (options.hidden_layers() > 1) {
    middle = register_module("middle", torch::nn::ModuleList());
    for (int64_t i = 1; i < options.hidden_layers(); ++i) middle->push_back(torch::nn::Linear(h, h));
  }
  down = register_module("down", torch::nn::Linear(options.hidden_dim(), options.model_dim()));
}

torch::Tensor DenseFfnImpl::forward(const torch::Tensor& x) {
  auto activate = [&](const torch::Tensor& pre) {
    auto hidden = torch::relu(pre);
    if (options.hidden_dropout() > 0 && is_training()) hidden = moelab::dropout(hidden, options.hidden_dropout(), true);
    return hidden;
  };
  auto hidden = activate(up(x));
  if (middle)
    for (const auto& layer : *middle) hidden = activate(layer->as<torch::nn::Linear>()->forward(hidden));
  return down(hidden);
}

int64_t DenseFfnImpl::flops_per_token() const {
  const int64_t d = options.model_dim(), h = options.hidden_dim();
  return 4 * d * h + 2 * (options.hidden_layers() - 1) * h * h;
}

int64_t deep_hidden_for_flops(int64_t model_dim, int64_t wide_hidden, int64_t hidden_layers) {
  if (hidden_layers <= 1) return wide_hidden;
  // Solve (n - 1) H^2 + 2 D H = 2 D W for H > 0, then keep the neighbouring integer that is closer.
  const double d = static_cast<double>(model_dim), w = static_cast<double>(wide_hidden);
  const double m = static_cast<double>(hidden_layers - 1);
  const double root = (-2 * d + std::sqrt(4 * d * d + 8 * m * d * w)) / (2 * m);
  auto gap = [&](int64_t h) { return std::abs(m * h * h + 2 * d * h - 2 * d * w); };
  const auto low = std::max<int64_t>(1, static_cast<int64_t>(std::floor(root)));
  return gap(low + 1) < gap(low) ? low + 1 : low;
}

int64_t DenseFfnImpl::params_total() const { return count_parameters(*this); }

}  // namespace moelab
