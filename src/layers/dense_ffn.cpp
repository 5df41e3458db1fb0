#include "moelab/layers/dense_ffn.h"

#include "moelab/util/error.h"
#include "moelab/util/parameter_count.h"

namespace moelab {

DenseFfnImpl::DenseFfnImpl(const DenseFfnOptions& options_) : options(options_) {
  if (options.hidden_dim() < 1) fail("dense FFN hidden width must be >= 1, got {}", options.hidden_dim());
  reset();
}

void DenseFfnImpl::reset() {
  // Not "in": LibTorch's archive format parses submodule names as TorchScript identifiers, and a
  // keyword there makes the checkpoint unreadable.
  up = register_module("up", torch::nn::Linear(options.model_dim(), options.hidden_dim()));
  down = register_module("down", torch::nn::Linear(options.hidden_dim(), options.model_dim()));
}

torch::Tensor DenseFfnImpl::forward(const torch::Tensor& x) {
  auto hidden = torch::relu(up(x));
  if (options.hidden_dropout() > 0 && is_training()) hidden = torch::dropout(hidden, options.hidden_dropout(), true);
  return down(hidden);
}

int64_t DenseFfnImpl::params_total() const { return count_parameters(*this); }

}  // namespace moelab
