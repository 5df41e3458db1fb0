#include "moelab/layers/causal_self_attention.h"

#include <torch/version.h>

#include <cmath>
#include <limits>
#include <vector>

#include "moelab/dispatch/grouped_matmul.h"
#include "moelab/util/error.h"

namespace moelab {

bool fused_attention_available() { return TORCH_VERSION_MAJOR >= 2; }

bool uses_fused_attention(AttentionKernel kernel) {
  return kernel == AttentionKernel::kFused || (kernel == AttentionKernel::kAuto && fused_attention_available());
}

void check_attention_heads(int64_t model_dim, int64_t heads, bool rotary) {
  if (heads < 1 || model_dim % heads != 0) fail("model.heads = {} must divide the model width {}", heads, model_dim);
  if (rotary && (model_dim / heads) % 2 != 0)
    fail("model.positions = \"rope\" needs an even head width; model.hidden / model.heads = {}", model_dim / heads);
}

int64_t attention_flops_per_token(int64_t model_dim, int64_t attended) {
  return 2 * 4 * model_dim * model_dim + 4 * attended * model_dim;
}

namespace {

// Query i (position P+i) may see key j when j <= P+i: true where masked out, [T, P+T].
torch::Tensor future_mask(int64_t queries, int64_t keys, const torch::Device& device) {
  const auto options = torch::TensorOptions().dtype(torch::kInt64).device(device);
  const auto query_position = torch::arange(keys - queries, keys, options).unsqueeze(1);
  return torch::arange(keys, options).unsqueeze(0) > query_position;
}


torch::Tensor attend_fused(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
#if TORCH_VERSION_MAJOR >= 2
  const int64_t queries = q.size(2), keys = k.size(2);
  // is_causal aligns the mask to the top-left corner, right only when no position is cached; one
  // new position sees every key; otherwise the mask is passed (true = may attend).
  if (queries == keys) return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
  if (queries == 1) return at::scaled_dot_product_attention(q, k, v);
  return at::scaled_dot_product_attention(q, k, v, future_mask(queries, keys, q.device()).logical_not());
#else
  (void)q, (void)k, (void)v;
  fail("fused attention needs LibTorch >= 2.0 (this build has {}.{}); use the plain kernel", TORCH_VERSION_MAJOR,
       TORCH_VERSION_MINOR);
#endif
}

}  // namespace

torch::Tensor attention_product(const torch::Tensor& a, const torch::Tensor& b) {
  const int64_t dims = a.dim();
  const bool direct = a.device().is_cpu() && a.scalar_type() == torch::kFloat32 && b.scalar_type() == torch::kFloat32 &&
                      dims >= 3 && b.dim() == dims && a.sizes().slice(0, dims - 2) == b.sizes().slice(0, dims - 2) &&
                      a.size(-1) == b.size(-2) && a.numel() > 0 && b.numel() > 0 && onednn_grouped_available();
  if (!direct) return torch::matmul(a, b);
  const int64_t rows = a.size(-2), inner = a.size(-1), columns = b.size(-1);
  const int64_t pairs = a.numel() / (rows * inner);
  const auto out = grouped_matmul(a.reshape({pairs * rows, inner}), b.reshape({pairs, inner, columns}),
                                  std::vector<int64_t>(static_cast<size_t>(pairs), rows), GroupedPath::kOneDnn);
  auto shape = a.sizes().vec();
  shape.back() = columns;
  return out.view(shape);
}

torch::Tensor attend_written_out(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                 const torch::Tensor& hidden) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto scores = attention_product(q, k.transpose(-2, -1)) * scale;  // [B, H, T, S]
  scores = scores.masked_fill(hidden, -std::numeric_limits<double>::infinity());
  // Softmax in float32 at least: bf16 scores (selective precision) would round the weights coarsely.
  const bool low = scores.scalar_type() == torch::kBFloat16 || scores.scalar_type() == torch::kHalf;
  const auto weights = low ? torch::softmax(scores, -1, torch::kFloat32).to(v.scalar_type()) : torch::softmax(scores, -1);
  return attention_product(weights, v);
}

torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, AttentionKernel kernel) {
  return uses_fused_attention(kernel) ? attend_fused(q, k, v) : attend_written_out(q, k, v, future_mask(q.size(2), k.size(2), q.device()));
}

torch::Tensor rotate_positions(const torch::Tensor& x, int64_t first) {
  const int64_t t = x.size(2), d = x.size(3), half = d / 2;
  // Angles in float32 at least: bf16 positions lose integer precision above 256.
  const auto f32 = torch::TensorOptions()
                       .dtype(x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32)
                       .device(x.device());
  const auto inverse_frequency = torch::pow(10000.0, -torch::arange(0, half, f32) / static_cast<double>(half));
  const auto angles = torch::arange(first, first + t, f32).unsqueeze(1) * inverse_frequency.unsqueeze(0);  // [T, d/2]
  const auto cos = angles.cos().to(x.scalar_type()), sin = angles.sin().to(x.scalar_type());
  const auto a = x.narrow(3, 0, half), b = x.narrow(3, half, half);
  return torch::cat({a * cos - b * sin, b * cos + a * sin}, 3);
}

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const CausalSelfAttentionOptions& options_) : options(options_) {
  check_attention_heads(options.model_dim(), options.heads(), options.rotary());
  reset();
}

void CausalSelfAttentionImpl::reset() {
  qkv = register_module("qkv", torch::nn::Linear(options.model_dim(), 3 * options.model_dim()));
  project = register_module("project", torch::nn::Linear(options.model_dim(), options.model_dim()));
}

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x, AttentionCache* cache) {
  TORCH_CHECK(x.dim() == 3, "attention expects [T, B, D], got ", x.sizes());
  const int64_t t = x.size(0), b = x.size(1), h = options.heads(), d = options.model_dim() / h;
  const int64_t first = cache ? cache->length() : 0;
  // [T, B, 3, H, d] -> [3, B, H, T, d]
  const auto parts = qkv(x).view({t, b, 3, h, d}).permute({2, 1, 3, 0, 4});
  auto q = parts[0], k = parts[1], v = parts[2];
  if (options.rotary()) {
    q = rotate_positions(q, first);
    k = rotate_positions(k, first);
  }
  if (cache) {
    if (cache->keys.defined()) {
      k = torch::cat({cache->keys, k}, 2);
      v = torch::cat({cache->values, v}, 2);
    }
    cache->keys = k;
    cache->values = v;
  }
  const auto y = attend(q.contiguous(), k.contiguous(), v.contiguous(), options.kernel());  // [B, H, T, d]
  return project(y.permute({2, 0, 1, 3}).reshape({t, b, options.model_dim()}));
}

int64_t CausalSelfAttentionImpl::flops_per_token(int64_t attended) const {
  return attention_flops_per_token(options.model_dim(), attended);
}

}  // namespace moelab
