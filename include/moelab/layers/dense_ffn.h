// A dense feed-forward block D -> H -> D (ReLU): the compute-matched baseline of Shazeer et al.
// 2017's tables when H = K * expert_hidden, and the oracle a one-expert MoE must equal.
#pragma once
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace moelab {

struct DenseFfnOptions {
  DenseFfnOptions(int64_t model_dim, int64_t hidden_dim) : model_dim_(model_dim), hidden_dim_(hidden_dim) {}
  /// Width D of input and output.
  TORCH_ARG(int64_t, model_dim);
  /// Hidden width H.
  TORCH_ARG(int64_t, hidden_dim);
  /// Dropout on the hidden activations while training (as the ffn experts' hidden_dropout).
  TORCH_ARG(double, hidden_dropout) = 0.0;
};

class DenseFfnImpl : public torch::nn::Module {
 public:
  explicit DenseFfnImpl(const DenseFfnOptions& options);
  void reset();
  torch::Tensor forward(const torch::Tensor& x);  // [N, D] -> [N, D]
  int64_t params_total() const;
  int64_t flops_per_token() const { return 4 * options.model_dim() * options.hidden_dim(); }

  DenseFfnOptions options;
  torch::nn::Linear up{nullptr};    // D -> H
  torch::nn::Linear down{nullptr};  // H -> D
};
TORCH_MODULE(DenseFfn);

}  // namespace moelab
