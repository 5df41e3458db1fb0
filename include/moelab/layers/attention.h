// Multi-head attention without a causal mask: an encoder's self-attention over its own positions,
// or a decoder's cross-attention over the encoder's output. Padded key positions get no weight.
//
// Shape legend: T query positions, S key positions, B batch columns, D model width, H heads,
// d = D / H head width.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "moelab/layers/causal_self_attention.h"

namespace moelab {

// softmax(q k^T / sqrt(d)) v for q [B, H, T, d], k and v [B, H, S, d], where key s of column b is
// left out when key_padding[b][s] is true ([B, S] bool). Every column needs one unpadded key.
torch::Tensor attend_unpadded(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& key_padding, AttentionKernel kernel);

// The keys and values of a memory sequence, projected once: a decoder reuses them at every step.
struct AttentionMemory {
  torch::Tensor keys, values;  // [B, H, S, d]
  torch::Tensor key_padding;   // [B, S] bool, true at padded positions
  AttentionMemory select(const torch::Tensor& columns) const;  // rows of the batch, for beam search
};

struct MultiHeadAttentionOptions {
  MultiHeadAttentionOptions(int64_t model_dim, int64_t heads) : model_dim_(model_dim), heads_(heads) {}
  TORCH_ARG(int64_t, model_dim);
  TORCH_ARG(int64_t, heads);
  /// Self-attention only: rotate queries and keys by their position (RoPE).
  TORCH_ARG(bool, rotary) = false;
  TORCH_ARG(AttentionKernel, kernel) = AttentionKernel::kAuto;
};

class MultiHeadAttentionImpl : public torch::nn::Module {
 public:
  explicit MultiHeadAttentionImpl(const MultiHeadAttentionOptions& options);
  void reset();
  // memory [S, B, D] -> its keys and values.
  AttentionMemory project_memory(const torch::Tensor& memory, const torch::Tensor& key_padding);
  // x [T, B, D] attends to the memory -> [T, B, D].
  torch::Tensor forward(const torch::Tensor& x, const AttentionMemory& memory);
  // Self-attention: x [T, B, D] attends to its own unpadded positions.
  torch::Tensor attend_self(const torch::Tensor& x, const torch::Tensor& key_padding);
  // Matrix-product FLOPs per query token attending `attended` keys, projections of the keys included
  // (once per key: counted per query token when each query has its own key, as in self-attention).
  int64_t flops_per_token(int64_t attended) const;

  MultiHeadAttentionOptions options;
  torch::nn::Linear query{nullptr};      // D -> D
  torch::nn::Linear key_value{nullptr};  // D -> 2D
  torch::nn::Linear project{nullptr};    // D -> D
};
TORCH_MODULE(MultiHeadAttention);

}  // namespace moelab
