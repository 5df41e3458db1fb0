// The normalisation of a pre-norm Transformer block: LayerNorm (mean and variance, gain and bias)
// or RMSNorm (Zhang and Sennrich 2019: root mean square only, gain only), over the last dimension.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>

namespace moelab {

// x divided by its root mean square over the last dimension, no gain; statistics in at least float32
// (the mean of squares is where bf16 loses most), the result in x's type.
torch::Tensor rms_normalised(const torch::Tensor& x, double eps = 1e-5);

class NormImpl : public torch::nn::Module {
 public:
  // kind: "layernorm" or "rmsnorm" (Error otherwise).
  NormImpl(const std::string& kind, int64_t dim, double eps = 1e-5);
  torch::Tensor forward(const torch::Tensor& x);

  std::string kind;
  double eps;
  torch::Tensor weight;  // [dim], ones
  torch::Tensor bias;    // [dim], zeros; layernorm only
};
TORCH_MODULE(Norm);

}  // namespace moelab
