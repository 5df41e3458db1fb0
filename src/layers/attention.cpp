#include "moelab/layers/attention.h"

#include <torch/version.h>

#include "moelab/util/error.h"

namespace moelab {

torch::Tensor attend_unpadded(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& key_padding, AttentionKernel kernel) {
  const auto hidden = key_padding.unsqueeze(1).unsqueeze(1);  // [B, 1, 1, S]
  const bool fused = uses_fused_attention(kernel);
#if TORCH_VERSION_MAJOR >= 2
  if (fused) return at::scaled_dot_product_attention(q, k, v, hidden.logical_not());  // true = may attend
#else
  if (fused) fail("fused attention needs LibTorch >= 2.0; use the plain kernel");
#endif
  return attend_written_out(q, k, v, hidden);
}

AttentionMemory AttentionMemory::select(const torch::Tensor& columns) const {
  return {keys.index_select(0, columns), values.index_select(0, columns), key_padding.index_select(0, columns)};
}

MultiHeadAttentionImpl::MultiHeadAttentionImpl(const MultiHeadAttentionOptions& options_) : options(options_) {
  check_attention_heads(options.model_dim(), options.heads(), options.rotary());
  reset();
}

void MultiHeadAttentionImpl::reset() {
  const int64_t d = options.model_dim();
  query = register_module("query", torch::nn::Linear(d, d));
  key_value = register_module("key_value", torch::nn::Linear(d, 2 * d));
  project = register_module("project", torch::nn::Linear(d, d));
}

AttentionMemory MultiHeadAttentionImpl::project_memory(const torch::Tensor& memory, const torch::Tensor& key_padding) {
  TORCH_CHECK(memory.dim() == 3, "attention memory must be [S, B, D], got ", memory.sizes());
  const int64_t s = memory.size(0), b = memory.size(1), h = options.heads(), d = options.model_dim() / h;
  const auto parts = key_value(memory).view({s, b, 2, h, d}).permute({2, 1, 3, 0, 4});  // [2, B, H, S, d]
  auto keys = parts[0];
  if (options.rotary()) keys = rotate_positions(keys, 0);
  return {keys.contiguous(), parts[1].contiguous(), key_padding};
}

torch::Tensor MultiHeadAttentionImpl::forward(const torch::Tensor& x, const AttentionMemory& memory) {
  TORCH_CHECK(x.dim() == 3, "attention expects [T, B, D], got ", x.sizes());
  const int64_t t = x.size(0), b = x.size(1), h = options.heads(), d = options.model_dim() / h;
  auto q = query(x).view({t, b, h, d}).permute({1, 2, 0, 3});  // [B, H, T, d]
  if (options.rotary()) q = rotate_positions(q, 0);
  const auto y = attend_unpadded(q.contiguous(), memory.keys, memory.values, memory.key_padding, options.kernel());
  return project(y.permute({2, 0, 1, 3}).reshape({t, b, options.model_dim()}));
}

torch::Tensor MultiHeadAttentionImpl::attend_self(const torch::Tensor& x, const torch::Tensor& key_padding) {
  return forward(x, project_memory(x, key_padding));
}

int64_t MultiHeadAttentionImpl::flops_per_token(int64_t attended) const {
  return attention_flops_per_token(options.model_dim(), attended);
}

}  // namespace moelab
