// A dense feed-forward block D -> H -> D (ReLU): the compute-matched baseline of Shazeer et al.
// 2017's tables when H = K * expert_hidden ("MoE-1-Wide"), and the oracle a one-expert MoE must
// equal. With hidden_layers = n > 1 it is the deeper stack D -> H -> ... -> H -> D of n ReLU layers
// ("MoE-1-Deep"); deep_hidden_for_flops picks the H that keeps a wide block's FLOPs per token.
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
  /// ReLU hidden layers of width H (1 = the usual two-matrix FFN).
  TORCH_ARG(int64_t, hidden_layers) = 1;
};

// The width H of a stack of `hidden_layers` ReLU layers D -> H -> ... -> H -> D whose FLOPs per
// token are closest to a one-hidden-layer FFN D -> wide_hidden -> D (at least 1).
int64_t deep_hidden_for_flops(int64_t model_dim, int64_t wide_hidden, int64_t hidden_layers);

class DenseFfnImpl : public torch::nn::Module {
 public:
  explicit DenseFfnImpl(const DenseFfnOptions& options);
  void reset();
  torch::Tensor forward(const torch::Tensor& x);  // [N, D] -> [N, D]
  int64_t params_total() const;
  int64_t flops_per_token() const;

  DenseFfnOptions options;
  torch::nn::Linear up{nullptr};    // D -> H
  torch::nn::ModuleList middle{nullptr};  // (hidden_layers - 1) x (H -> H); empty for the usual FFN
  torch::nn::Linear down{nullptr};  // H -> D
};
TORCH_MODULE(DenseFfn);

}  // namespace moelab
