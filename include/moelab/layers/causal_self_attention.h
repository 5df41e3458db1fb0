// Causal multi-head self-attention over a window of positions, with an optional key/value cache
// for generation and optional rotary position embeddings (RoPE, Su et al. 2021).
//
// Shape legend: T positions, B batch columns, D model width, H heads, d = D / H head width,
// P positions already in the cache.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace moelab {

// Keys and values of the positions seen so far, [B, H, P, d] each; undefined until the first call.
struct AttentionCache {
  torch::Tensor keys, values;
  int64_t length() const { return keys.defined() ? keys.size(2) : 0; }
};

// "fused": LibTorch's scaled_dot_product_attention (LibTorch >= 2.0); "plain": softmax(QK^T/sqrt(d))V
// written out, the oracle of the fused path; "auto": fused where available.
enum class AttentionKernel { kAuto, kFused, kPlain };
bool fused_attention_available();
// True when `kernel` runs LibTorch's fused attention: kFused, or kAuto where it is available.
bool uses_fused_attention(AttentionKernel kernel);
// Throws Error unless `heads` divides `model_dim` and, for rotary positions, the head width is even.
void check_attention_heads(int64_t model_dim, int64_t heads, bool rotary);
// Matrix-product FLOPs per token of multi-head attention: the four D x D projections, plus QK^T
// and AV over `attended` positions.
int64_t attention_flops_per_token(int64_t model_dim, int64_t attended);

struct CausalSelfAttentionOptions {
  CausalSelfAttentionOptions(int64_t model_dim, int64_t heads) : model_dim_(model_dim), heads_(heads) {}
  TORCH_ARG(int64_t, model_dim);
  TORCH_ARG(int64_t, heads);
  /// Rotate queries and keys by their absolute position (RoPE) instead of adding position embeddings.
  TORCH_ARG(bool, rotary) = false;
  TORCH_ARG(AttentionKernel, kernel) = AttentionKernel::kAuto;
};

class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit CausalSelfAttentionImpl(const CausalSelfAttentionOptions& options);
  void reset();
  // x [T, B, D] at positions P..P+T-1 (P = cache length, 0 without a cache) -> [T, B, D]. Position t
  // attends to positions <= t only. With a cache, its keys and values are extended by these T.
  torch::Tensor forward(const torch::Tensor& x, AttentionCache* cache = nullptr);
  // Matrix-product FLOPs per token at inference, `attended` positions attended on average (a causal
  // window of T attends (T + 1) / 2).
  int64_t flops_per_token(int64_t attended) const;

  CausalSelfAttentionOptions options;
  torch::nn::Linear qkv{nullptr};     // D -> 3D
  torch::nn::Linear project{nullptr}; // D -> D
};
TORCH_MODULE(CausalSelfAttention);

// softmax(q k^T / sqrt(d) + causal mask) v for q [B, H, T, d] at positions P..P+T-1 and k, v
// [B, H, P+T, d]: the two kernels behind CausalSelfAttention, exposed for their agreement test.
torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, AttentionKernel kernel);

// softmax(q k^T / sqrt(d)) v with the keys where `hidden` is true ([T, S] or broadcastable to
// [B, H, T, S]) left out, written out (the plain kernel of every attention here); the softmax runs
// in float32 at least. q [B, H, T, d], k and v [B, H, S, d].
torch::Tensor attend_written_out(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                 const torch::Tensor& hidden);

// a [..., T, d] @ b [..., d, S] over the same leading (batch, head) dimensions: the two products of
// the plain kernel. On the CPU in float32 each (sequence, head) pair goes straight to oneDNN's sgemm
// (grouped_matmul's kOneDnn path, differentiable in both operands); LibTorch's bmm spends ~17 µs of
// tensor bookkeeping per pair there, and a translation batch has ~1,600 pairs of ~20 x 64 x 20.
// Elsewhere (GPU, other types, no oneDNN, broadcast batch dimensions) torch::matmul.
torch::Tensor attention_product(const torch::Tensor& a, const torch::Tensor& b);

// RoPE applied to x [B, H, T, d] at positions first..first+T-1 (pairs (i, i + d/2) rotated).
torch::Tensor rotate_positions(const torch::Tensor& x, int64_t first);

}  // namespace moelab
