#include "moelab/dispatch/grouped_matmul.h"

#include "moelab/device/precision.h"

#include <dlfcn.h>
#include <torch/autograd.h>

// LibTorch 2.8 added a grouped matrix product; 1.13 has no such header.
#if __has_include(<ATen/ops/_grouped_mm.h>)
#include <ATen/ops/_grouped_mm.h>
#define MOELAB_HAVE_GROUPED_MM 1
#else
#define MOELAB_HAVE_GROUPED_MM 0
#endif

#include "moelab/device/device.h"
#include "moelab/dispatch/expert_loop.h"
#include "moelab/dispatch/grouped_path_cache.h"
#include "moelab/dispatch/stream_kernels.h"
#include "moelab/util/error.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <limits>
#include <numeric>
#include <tuple>
#include <utility>

namespace moelab {

namespace {

void check_grouped_inputs(const torch::Tensor& x, const torch::Tensor& weight,
                          const std::vector<int64_t>& rows_per_expert) {
  TORCH_CHECK(x.dim() == 2, "grouped_matmul: x must be [M, I], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 3, "grouped_matmul: weight must be [E, I, O], got ", weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(1), "grouped_matmul: x width ", x.size(1), " != weight input width ",
              weight.size(1));
  TORCH_CHECK(static_cast<int64_t>(rows_per_expert.size()) == weight.size(0), "grouped_matmul: ",
              rows_per_expert.size(), " row counts for ", weight.size(0), " experts");
  int64_t total = 0;
  for (auto rows : rows_per_expert) {
    TORCH_CHECK(rows >= 0, "grouped_matmul: negative row count");
    total += rows;
  }
  TORCH_CHECK(total == x.size(0), "grouped_matmul: row counts sum to ", total, " but x has ", x.size(0), " rows");
}

// The output of one product on the host: [E, I, O] for the weight gradient, else one row per input row.
torch::Tensor empty_product_result(GroupedProduct product, const torch::Tensor& a, const torch::Tensor& weight) {
  if (product == GroupedProduct::kWeightGrad) return torch::empty({weight.size(0), weight.size(1), weight.size(2)}, a.options());
  return torch::empty({a.size(0), product == GroupedProduct::kForward ? weight.size(2) : weight.size(1)}, a.options());
}

// The raw-pointer paths (oneDNN, streaming) read host memory of one element type: every operand on
// the CPU.
bool cpu_operands_of(torch::ScalarType type, const torch::Tensor& a, const torch::Tensor& weight,
                     const torch::Tensor& grad_out) {
  return a.device().is_cpu() && weight.device().is_cpu() && (!grad_out.defined() || grad_out.device().is_cpu()) &&
         a.scalar_type() == type && weight.scalar_type() == type &&
         (!grad_out.defined() || grad_out.scalar_type() == type);
}
bool cpu_float32_operands(const torch::Tensor& a, const torch::Tensor& weight, const torch::Tensor& grad_out) {
  return cpu_operands_of(torch::kFloat, a, weight, grad_out);
}

// oneDNN's row-major sgemm, looked up at run time: LibTorch builds that link oneDNN statically hide it.
using DnnlSgemm = int (*)(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

DnnlSgemm dnnl_sgemm_function() {
  static const auto fn = reinterpret_cast<DnnlSgemm>(dlsym(RTLD_DEFAULT, "dnnl_sgemm"));
  return fn;
}

// oneDNN's row-major bf16 x bf16 -> float32 gemm (float32 accumulation), looked up like dnnl_sgemm.
using DnnlGemmBf16 = int (*)(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha,
                             const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, float beta, float* c,
                             int64_t ldc);

// Exported is not enough: oneDNN has no bf16 gemm for CPUs without AVX-512 (status 3,
// unimplemented, on an AVX2-only EPYC), so a 1 x 1 x 1 product decides once whether the path exists.
DnnlGemmBf16 dnnl_gemm_bf16_function() {
  static const auto fn = [] {
    const auto found = reinterpret_cast<DnnlGemmBf16>(dlsym(RTLD_DEFAULT, "dnnl_gemm_bf16bf16f32"));
    if (!found) return found;
    const uint16_t one = 0x3f80;  // 1.0 in bfloat16
    float out = 0;
    const bool works = found('N', 'N', 1, 1, 1, 1.0f, &one, 1, &one, 1, 0.0f, &out, 1) == 0 && out == 1.0f;
    return works ? found : DnnlGemmBf16{nullptr};
  }();
  return fn;
}

// dst [cols, rows] (leading dimension ld) = src [rows, cols] transposed, in tiles that stay in cache.
void transpose_into(const float* src, int64_t rows, int64_t cols, float* dst, int64_t ld) {
  constexpr int64_t kTile = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile)
    for (int64_t c0 = 0; c0 < cols; c0 += kTile)
      for (int64_t r = r0; r < std::min(rows, r0 + kTile); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + kTile); ++c) dst[c * ld + r] = src[r * cols + c];
}

// The oneDNN paths on raw pointers into the contiguous operands, one sgemm per expert: no tensor view
// per expert (views cost ~1 us each; E = 64, k = 1 made ~5,000 a step, E = 1024 sixteen times as
// many). A weight that is not contiguous (parameters are) is copied first. `transposed` computes each
// block as its transpose into a scratch buffer and copies it back (kOneDnnTransposed).
// `a`: x [M, I] (forward, weight gradient) or grad_out [M, O] (input gradient).
torch::Tensor onednn_product(GroupedProduct product, const torch::Tensor& a, const torch::Tensor& weight,
                             const torch::Tensor& grad_out, const std::vector<int64_t>& rows_per_expert,
                             bool transposed) {
  const auto dnnl_sgemm = dnnl_sgemm_function();
  const auto sgemm = [dnnl_sgemm](char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float* pa,
                                  int64_t lda, const float* pb, int64_t ldb, float beta, float* pc, int64_t ldc) {
    const int status = dnnl_sgemm(ta, tb, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
    TORCH_CHECK(status == 0, "oneDNN sgemm failed with status ", status, " (", m, " x ", n, " x ", k, ")");
  };
  const int64_t experts = weight.size(0), in = weight.size(1), out_width = weight.size(2);
  const auto w = weight.contiguous();
  const float* wp = w.data_ptr<float>();
  const auto a_c = a.contiguous();
  const auto g_c = grad_out.defined() ? grad_out.contiguous() : grad_out;
  const float* ap = a_c.data_ptr<float>();
  const auto offsets = block_offsets(rows_per_expert);
  const auto result = empty_product_result(product, a, weight);
  torch::Tensor scratch;
  if (product == GroupedProduct::kWeightGrad) {
    if (transposed) scratch = torch::empty({in * out_width}, a.options());
  } else {
    int64_t most_rows = 0;
    for (auto rows : rows_per_expert) most_rows = std::max(most_rows, rows);
    if (transposed) scratch = torch::empty({most_rows * std::max(in, out_width)}, a.options());
  }
  float* rp = result.data_ptr<float>();
  float* sp = transposed ? scratch.data_ptr<float>() : nullptr;
  const float* gp = product == GroupedProduct::kWeightGrad ? g_c.data_ptr<float>() : nullptr;
  // C [m, n] = op(A) op(B), or with `transposed` C^T = op(B)^T op(A)^T into the scratch, then copied.
  const auto block_gemm = [&](char ta, char tb, int64_t m, int64_t n, int64_t k, const float* pa, int64_t lda,
                              const float* pb, int64_t ldb, float* pc, int64_t ldc) {
    if (!transposed) return sgemm(ta, tb, m, n, k, 1.0f, pa, lda, pb, ldb, 0.0f, pc, ldc);
    sgemm(tb == 'N' ? 'T' : 'N', ta == 'N' ? 'T' : 'N', n, m, k, 1.0f, pb, ldb, pa, lda, 0.0f, sp, m);
    transpose_into(sp, n, m, pc, ldc);
  };
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t rows = rows_per_expert[e], offset = offsets[e];
    const float* we = wp + e * in * out_width;  // [I, O]
    if (product == GroupedProduct::kForward) {  // out_e [R, O] = x_e [R, I] W_e
      if (rows > 0)
        block_gemm('N', 'N', rows, out_width, in, ap + offset * in, in, we, out_width, rp + offset * out_width,
                   out_width);
    } else if (product == GroupedProduct::kInputGrad) {  // grad_x_e [R, I] = g_e [R, O] W_e^T
      if (rows > 0)
        block_gemm('N', 'T', rows, in, out_width, ap + offset * out_width, out_width, we, out_width, rp + offset * in,
                   in);
    } else {  // grad_w_e [I, O] = x_e^T g_e; an expert without rows gets zeros
      float* oe = rp + e * in * out_width;
      if (rows == 0)
        std::fill(oe, oe + in * out_width, 0.0f);
      else
        block_gemm('T', 'N', in, out_width, rows, ap + offset * in, in, gp + offset * out_width, out_width, oe,
                   out_width);
    }
  }
  return result;
}

// GroupedPath::kOneDnn in bf16: one dnnl_gemm_bf16bf16f32 per expert, experts split over the cores,
// each block accumulated in float32 and rounded to bf16 once. LibTorch's bf16 mm reaches the same
// kernels through a oneDNN primitive compiled per shape, and an expert's row count changes at almost
// every call: with the primitive cache at the 64 entries moelab sets (see blas_env.cpp) the E = 64,
// k = 2 layer took 135.9 ms, 104.1 with 1,024 entries. This function compiles nothing per shape.
torch::Tensor onednn_bf16_product(GroupedProduct product, const torch::Tensor& a, const torch::Tensor& weight,
                                  const torch::Tensor& grad_out, const std::vector<int64_t>& rows_per_expert) {
  const auto gemm = dnnl_gemm_bf16_function();
  const int64_t in = weight.size(1), out_width = weight.size(2);
  const auto w = weight.contiguous();
  const auto a_c = a.contiguous();
  const auto g_c = product == GroupedProduct::kWeightGrad ? grad_out.contiguous() : grad_out;
  const auto result = empty_product_result(product, a, weight);
  const auto bits = [](const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr()); };
  const uint16_t* wp = bits(w);
  const uint16_t* ap = bits(a_c);
  const uint16_t* gp = product == GroupedProduct::kWeightGrad ? bits(g_c) : nullptr;
  const auto float32 = a.options().dtype(torch::kFloat);
  for_each_expert(rows_per_expert, /*parallel=*/true, [&](int64_t e, int64_t offset, int64_t rows) {
    const uint16_t* we = wp + e * in * out_width;  // [I, O]
    torch::Tensor target;
    int64_t m = 0, n = 0;
    if (product == GroupedProduct::kWeightGrad) {
      target = result.select(0, e), m = in, n = out_width;
      if (rows == 0) {
        target.zero_();  // an expert without rows gets a zero gradient
        return;
      }
    } else {
      if (rows == 0) return;
      m = rows, n = product == GroupedProduct::kForward ? out_width : in;
      target = result.narrow(0, offset, rows);
    }
    auto block = torch::empty({m, n}, float32);
    float* c = block.data_ptr<float>();
    int status = 0;
    if (product == GroupedProduct::kForward)  // out_e [R, O] = x_e [R, I] W_e
      status = gemm('N', 'N', rows, out_width, in, 1.0f, ap + offset * in, in, we, out_width, 0.0f, c, out_width);
    else if (product == GroupedProduct::kInputGrad)  // grad_x_e [R, I] = g_e [R, O] W_e^T
      status = gemm('N', 'T', rows, in, out_width, 1.0f, ap + offset * out_width, out_width, we, out_width, 0.0f, c, in);
    else  // grad_w_e [I, O] = x_e^T g_e
      status = gemm('T', 'N', in, out_width, rows, 1.0f, ap + offset * in, in, gp + offset * out_width, out_width,
                    0.0f, c, out_width);
    TORCH_CHECK(status == 0, "oneDNN bf16 gemm failed with status ", status, " (", m, " x ", n, ")");
    target.copy_(block);
  });
  return result;
}

// Padded layout: row m of expert e goes to position e * C + (m - offset_e) of an [E * C] buffer.
struct PaddedLayout {
  int64_t capacity = 0;       // C, the largest block
  torch::Tensor position;     // [M] int64
};

// A tensor built on the host, on `device`. To a GPU it goes from pinned memory without waiting: the
// copy is queued behind the kernels already queued, so the host does not wait for the device.
torch::Tensor host_to_device(const torch::Tensor& host, const torch::Device& device) {
  if (device.is_cpu()) return host;
  return host.pin_memory().to(device, /*non_blocking=*/true);
}

PaddedLayout padded_layout(const std::vector<int64_t>& rows_per_expert, const torch::Device& device) {
  PaddedLayout layout;
  int64_t total = 0;
  for (auto rows : rows_per_expert) layout.capacity = std::max(layout.capacity, rows), total += rows;
  auto position = torch::empty({total}, torch::kInt64);
  auto* p = position.data_ptr<int64_t>();
  for (size_t e = 0; e < rows_per_expert.size(); ++e)
    for (int64_t r = 0; r < rows_per_expert[e]; ++r) *p++ = static_cast<int64_t>(e) * layout.capacity + r;
  layout.position = host_to_device(position, device);
  return layout;
}

// The one refusal of the grouped_mm path where LibTorch lacks the operator.
[[noreturn]] void refuse_grouped_mm() {
  fail("train.grouped_path = \"grouped_mm\" needs LibTorch >= 2.8; this is {}", libtorch_description());
}

#if MOELAB_HAVE_GROUPED_MM
// at::_grouped_mm's group boundaries: the cumulative row counts [E] as int32, on the data's device.
torch::Tensor group_ends(const std::vector<int64_t>& rows_per_expert, const torch::Device& device) {
  std::vector<int32_t> ends(rows_per_expert.size());
  int64_t total = 0;
  for (size_t e = 0; e < rows_per_expert.size(); ++e) {
    total += rows_per_expert[e];
    TORCH_CHECK(total <= std::numeric_limits<int32_t>::max(), "grouped_mm: more than 2^31 rows");
    ends[e] = static_cast<int32_t>(total);
  }
  return host_to_device(torch::tensor(ends, torch::kInt32), device);
}
#endif

#if MOELAB_HAVE_GROUPED_MM
// LibTorch's CUDA grouped kernel refuses 1,024 groups and more ("Can't process more than 1024
// groups", torch 2.11 on an H200 at E = 1,024); more experts go through it in chunks of this many.
constexpr size_t kGroupsPerCall = 512;

// One chunk of experts: where it starts, its row counts, and where and how many its rows are.
struct GroupChunk {
  int64_t first_expert = 0;
  std::vector<int64_t> rows_per_expert;
  int64_t first_row = 0, rows = 0;
  int64_t experts() const { return static_cast<int64_t>(rows_per_expert.size()); }
};

// Calls `product(chunk)` once per chunk of at most kGroupsPerCall experts and stacks the results
// along the first dimension (rows or experts).
template <typename Product>
torch::Tensor in_group_chunks(const std::vector<int64_t>& rows_per_expert, Product product) {
  std::vector<torch::Tensor> parts;
  int64_t first_row = 0;
  size_t first = 0;
  do {  // once at least: no experts make one empty chunk
    const auto begin = rows_per_expert.begin() + static_cast<std::ptrdiff_t>(first);
    const auto end = begin + static_cast<std::ptrdiff_t>(std::min(kGroupsPerCall, rows_per_expert.size() - first));
    GroupChunk chunk{static_cast<int64_t>(first), {begin, end}, first_row, std::accumulate(begin, end, int64_t{0})};
    parts.push_back(product(chunk));
    first_row += chunk.rows;
    first += kGroupsPerCall;
  } while (first < rows_per_expert.size());
  return parts.size() == 1 ? parts.front() : torch::cat(parts, 0);
}
#endif

// out[block e] = x[block e] @ weight[e] in one call of LibTorch's grouped product (per chunk of experts).
torch::Tensor grouped_mm_blocks(const torch::Tensor& x, const torch::Tensor& weight,
                                const std::vector<int64_t>& rows_per_expert) {
#if MOELAB_HAVE_GROUPED_MM
  return in_group_chunks(rows_per_expert, [&](const GroupChunk& chunk) {
    // A chunk without rows needs no kernel (nor the operator's handling of M = 0).
    if (chunk.rows == 0) return x.new_empty({0, weight.size(2)});
    return at::_grouped_mm(x.narrow(0, chunk.first_row, chunk.rows),
                           weight.narrow(0, chunk.first_expert, chunk.experts()),
                           group_ends(chunk.rows_per_expert, x.device()));
  });
#else
  refuse_grouped_mm();
#endif
}

// grad_w[e] = x[block e]^T @ grad_out[block e]: the grouped product with the groups along the inner
// dimension. Experts without rows get explicit zeros (an empty sum is not written by every kernel).
torch::Tensor grouped_mm_outer_products(const torch::Tensor& x, const torch::Tensor& grad_out,
                                        const std::vector<int64_t>& rows_per_expert) {
#if MOELAB_HAVE_GROUPED_MM
  auto grad_w = in_group_chunks(rows_per_expert, [&](const GroupChunk& chunk) {
    if (chunk.rows == 0) return x.new_zeros({chunk.experts(), x.size(1), grad_out.size(1)});
    return at::_grouped_mm(x.narrow(0, chunk.first_row, chunk.rows).t(), grad_out.narrow(0, chunk.first_row, chunk.rows),
                           group_ends(chunk.rows_per_expert, x.device()));  // [experts of the chunk, I, O]
  });
  for (size_t e = 0; e < rows_per_expert.size(); ++e)
    if (rows_per_expert[e] == 0) grad_w.select(0, static_cast<int64_t>(e)).zero_();
  return grad_w;
#else
  refuse_grouped_mm();
#endif
}

torch::Tensor to_padded(const torch::Tensor& rows, const PaddedLayout& layout, int64_t experts) {
  auto padded = torch::zeros({experts * layout.capacity, rows.size(1)}, rows.options());
  padded.index_copy_(0, layout.position, rows);
  return padded.view({experts, layout.capacity, rows.size(1)});
}

torch::Tensor from_padded(const torch::Tensor& padded, const PaddedLayout& layout) {
  return padded.reshape({-1, padded.size(2)}).index_select(0, layout.position);
}

// out[block e] = x[block e] @ weight[e]; the forward product and, with weight transposed, grad_x.
torch::Tensor blocks_times_weights(const torch::Tensor& x, const torch::Tensor& weight,
                                   const std::vector<int64_t>& rows_per_expert, GroupedPath path) {
  const int64_t experts = weight.size(0);
  if (path == GroupedPath::kPaddedBmm) {
    const auto layout = padded_layout(rows_per_expert, x.device());
    return from_padded(torch::bmm(to_padded(x, layout, experts), weight), layout);
  }
  if (path == GroupedPath::kGroupedMm) return grouped_mm_blocks(x, weight, rows_per_expert);
  auto out = torch::empty({x.size(0), weight.size(2)}, x.options());
  for_each_expert(rows_per_expert, path == GroupedPath::kParallel, [&](int64_t e, int64_t offset, int64_t rows) {
    if (rows == 0) return;
    auto block = out.narrow(0, offset, rows);
    at::mm_out(block, x.narrow(0, offset, rows), weight.select(0, e));
  });
  return out;
}

// grad_w[e] = x[block e]^T @ grad_out[block e]; experts without rows get zeros. Allocated without
// zero-filling: only empty experts' slices are zeroed, so a step does not pay a full-buffer memset.
// The padded path's zero padding rows give empty experts their zeros by themselves.
torch::Tensor blocks_outer_products(const torch::Tensor& x, const torch::Tensor& grad_out,
                                    const std::vector<int64_t>& rows_per_expert, GroupedPath path) {
  if (path == GroupedPath::kGroupedMm) return grouped_mm_outer_products(x, grad_out, rows_per_expert);
  const int64_t experts = static_cast<int64_t>(rows_per_expert.size());
  if (path == GroupedPath::kPaddedBmm) {
    const auto layout = padded_layout(rows_per_expert, x.device());
    return torch::bmm(to_padded(x, layout, experts).transpose(1, 2), to_padded(grad_out, layout, experts));
  }
  auto grad_w = torch::empty({experts, x.size(1), grad_out.size(1)}, x.options());
  for_each_expert(rows_per_expert, path == GroupedPath::kParallel, [&](int64_t e, int64_t offset, int64_t rows) {
    auto slice = grad_w.select(0, e);
    if (rows == 0) {
      slice.zero_();
      return;
    }
    at::mm_out(slice, x.narrow(0, offset, rows).t(), grad_out.narrow(0, offset, rows));
  });
  return grad_w;
}

// Both gradients on the padded path, when both chose it: the layout and the padded grad_out are built
// once and serve both batched products (padding rows are zero, so experts without rows get zeros).
std::pair<torch::Tensor, torch::Tensor> padded_backward(const torch::Tensor& x, const torch::Tensor& weight,
                                                        const torch::Tensor& grad_out,
                                                        const std::vector<int64_t>& rows_per_expert) {
  const int64_t experts = weight.size(0);
  const auto layout = padded_layout(rows_per_expert, x.device());
  const auto grad_padded = to_padded(grad_out, layout, experts);  // [E, C, O]
  return {from_padded(torch::bmm(grad_padded, weight.transpose(1, 2)), layout),
          torch::bmm(to_padded(x, layout, experts).transpose(1, 2), grad_padded)};
}

// Blocks up to this many rows take the streaming kernels; larger ones a GEMM, whose packing pays off
// once a weight element serves that many rows. The input gradient's kernel keeps up with a GEMM
// longer, and the GEMM it would hand over to reads the weight transposed (the slowest operand order).
int64_t stream_max_rows(GroupedProduct product) { return product == GroupedProduct::kInputGrad ? 64 : 32; }

bool streaming_available() { return stream_kernels_isa() != StreamIsa::kNone; }

// kStreaming: experts split over the cores by rows; each block through the streaming kernel of its
// product when it has at most stream_max_rows rows, through LibTorch's mm (one core each) otherwise.
torch::Tensor streaming_product(GroupedProduct product, const torch::Tensor& a, const torch::Tensor& weight,
                                const torch::Tensor& grad_out, const std::vector<int64_t>& rows_per_expert) {
  const int64_t in = weight.size(1), out_width = weight.size(2);
  const auto w = weight.contiguous();
  const auto a_c = a.contiguous();
  const auto g_c = product == GroupedProduct::kWeightGrad ? grad_out.contiguous() : grad_out;
  const auto result = empty_product_result(product, a, weight);
  const float* wp = w.data_ptr<float>();
  const float* ap = a_c.data_ptr<float>();
  float* rp = result.data_ptr<float>();
  for_each_expert(rows_per_expert, /*parallel=*/true, [&](int64_t e, int64_t offset, int64_t rows) {
    const float* we = wp + e * in * out_width;
    if (rows > stream_max_rows(product)) {
      const auto block = a_c.narrow(0, offset, rows);
      auto target = product == GroupedProduct::kWeightGrad ? result.select(0, e) : result.narrow(0, offset, rows);
      if (product == GroupedProduct::kForward) at::mm_out(target, block, w.select(0, e));
      if (product == GroupedProduct::kInputGrad) at::mm_out(target, block, w.select(0, e).t());
      if (product == GroupedProduct::kWeightGrad) at::mm_out(target, block.t(), g_c.narrow(0, offset, rows));
      return;
    }
    switch (product) {
      case GroupedProduct::kForward:  // out_e [R, O] = x_e [R, I] W_e
        stream_forward(ap + offset * in, rows, we, in, out_width, rp + offset * out_width);
        break;
      case GroupedProduct::kInputGrad:  // grad_x_e [R, I] = g_e [R, O] W_e^T
        stream_input_grad(ap + offset * out_width, rows, we, in, out_width, rp + offset * in);
        break;
      case GroupedProduct::kWeightGrad:  // grad_w_e [I, O] = x_e^T g_e (zeros without rows)
        stream_weight_grad(ap + offset * in, g_c.data_ptr<float>() + offset * out_width, rows, in, out_width,
                           rp + e * in * out_width);
        break;
    }
  });
  return result;
}

// One of the three products of a grouped matmul. `a`: the rows x [M, I] (forward, weight gradient)
// or the output gradient [M, O] (input gradient); `grad_out` [M, O]: only for the weight gradient.
torch::Tensor grouped_product(GroupedProduct product, const torch::Tensor& a, const torch::Tensor& weight,
                              const torch::Tensor& grad_out, const std::vector<int64_t>& rows_per_expert,
                              GroupedPath path) {
  const bool onednn = path == GroupedPath::kOneDnn || path == GroupedPath::kOneDnnTransposed;
  // oneDNN refuses leading dimensions of 0: empty widths take the loop, which handles them.
  if (onednn && dnnl_sgemm_function() && cpu_float32_operands(a, weight, grad_out) && weight.size(1) > 0 &&
      weight.size(2) > 0)
    return onednn_product(product, a, weight, grad_out, rows_per_expert, path == GroupedPath::kOneDnnTransposed);
  if (path == GroupedPath::kOneDnn && dnnl_gemm_bf16_function() &&
      cpu_operands_of(torch::kBFloat16, a, weight, grad_out) && weight.size(1) > 0 && weight.size(2) > 0)
    return onednn_bf16_product(product, a, weight, grad_out, rows_per_expert);
  if (path == GroupedPath::kStreaming && streaming_available() && cpu_float32_operands(a, weight, grad_out))
    return streaming_product(product, a, weight, grad_out, rows_per_expert);
  switch (product) {
    case GroupedProduct::kForward: return blocks_times_weights(a, weight, rows_per_expert, path);
    case GroupedProduct::kInputGrad: return blocks_times_weights(a, weight.transpose(1, 2), rows_per_expert, path);
    case GroupedProduct::kWeightGrad: return blocks_outer_products(a, grad_out, rows_per_expert, path);
  }
  return {};
}

// Seconds for one product along `path`, the best of three.
double time_product(const std::function<void()>& product) {
  double best = std::numeric_limits<double>::infinity();
  for (int repeat = 0; repeat < 3; ++repeat) {
    const auto start = std::chrono::steady_clock::now();
    product();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

// The path of one product: the requested one, or for kAuto the saved or measured choice of its
// shape class. Operands as grouped_product's (all three have M rows of one element type on one device).
GroupedPath resolve_path(GroupedPath requested, GroupedProduct product, const torch::Tensor& a,
                         const torch::Tensor& weight, const torch::Tensor& grad_out,
                         const std::vector<int64_t>& rows_per_expert) {
  if (requested == GroupedPath::kAuto) requested = grouped_path();
  if (requested == GroupedPath::kGroupedMm && !grouped_mm_available())
    refuse_grouped_mm();
  if (requested != GroupedPath::kAuto) return requested;
  // Off the CPU the loop only queues kernels; splitting it over host threads gains nothing. The
  // grouped kernel exists for bf16 on Hopper and later (elsewhere LibTorch loops itself).
  if (!a.device().is_cpu())
    return grouped_mm_available() && a.scalar_type() == torch::kBFloat16 && weight.scalar_type() == torch::kBFloat16 &&
                   cuda_capability(a.device()) >= 90
               ? GroupedPath::kGroupedMm
               : GroupedPath::kLoop;
  const auto shape = grouped_shape_of(a, weight, rows_per_expert, product);
  const auto known = chosen_grouped_path(shape);
  if (known != GroupedPath::kAuto) return known;
  const auto candidates = cpu_grouped_paths(a.scalar_type());
  const auto measure = [&] {
    torch::NoGradGuard no_grad;
    const auto ad = a.detach().contiguous();
    const auto wd = weight.detach();
    const auto gd = grad_out.defined() ? grad_out.detach().contiguous() : grad_out;
    GroupedChoice choice;
    choice.shape = shape;
    choice.path = GroupedPath::kLoop;
    double best_seconds = std::numeric_limits<double>::infinity();
    for (auto candidate : candidates) {
      const double seconds =
          time_product([&] { grouped_product(product, ad, wd, gd, rows_per_expert, candidate); });
      choice.measured_ms.emplace_back(candidate, seconds * 1e3);
      if (seconds < best_seconds) best_seconds = seconds, choice.path = candidate;
    }
    return choice;
  };
  const auto choice = saved_or_measured_choice(shape, measure, candidates);
  remember_grouped_path(choice);
  return choice.path;
}

// `requested`: the path asked for, the process default already put in for kAuto (kAuto here: each
// product's own choice); `forward_path`: the forward's, already resolved. The two gradients resolve
// theirs when they run, on the real gradient.
class GroupedMatmul : public torch::autograd::Function<GroupedMatmul> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const std::vector<int64_t>& rows_per_expert,
                               int64_t requested, int64_t forward_path) {
    const auto x_c = x.contiguous();
    ctx->save_for_backward({x_c, weight});
    ctx->saved_data["rows"] = c10::IValue(rows_per_expert);
    ctx->saved_data["requested"] = requested;
    return grouped_product(GroupedProduct::kForward, x_c, weight, torch::Tensor(), rows_per_expert,
                           static_cast<GroupedPath>(forward_path));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& weight = saved[1];
    const auto rows_per_expert = ctx->saved_data["rows"].toIntVector();
    const auto requested = static_cast<GroupedPath>(ctx->saved_data["requested"].toInt());
    const auto grad_out = grad_outputs[0].contiguous();  // [M, O]
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1);
    const auto x_path =
        need_x ? resolve_path(requested, GroupedProduct::kInputGrad, grad_out, weight, grad_out, rows_per_expert)
               : GroupedPath::kAuto;
    const auto w_path =
        need_w ? resolve_path(requested, GroupedProduct::kWeightGrad, x, weight, grad_out, rows_per_expert)
               : GroupedPath::kAuto;
    torch::Tensor grad_x, grad_w;
    if (need_x && need_w && x_path == GroupedPath::kPaddedBmm && w_path == GroupedPath::kPaddedBmm) {
      std::tie(grad_x, grad_w) = padded_backward(x, weight, grad_out, rows_per_expert);
    } else {
      if (need_x) grad_x = grouped_product(GroupedProduct::kInputGrad, grad_out, weight, grad_out, rows_per_expert, x_path);
      if (need_w) grad_w = grouped_product(GroupedProduct::kWeightGrad, x, weight, grad_out, rows_per_expert, w_path);
    }
    return {grad_x, grad_w, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

bool onednn_grouped_available() { return dnnl_sgemm_function() != nullptr; }

bool onednn_bf16_grouped_available() { return dnnl_gemm_bf16_function() != nullptr; }

std::vector<GroupedPath> cpu_grouped_paths(torch::ScalarType dtype) {
  std::vector<GroupedPath> paths = {GroupedPath::kLoop, GroupedPath::kParallel, GroupedPath::kPaddedBmm};
  if (onednn_grouped_available() && dtype == torch::kFloat) {
    paths.push_back(GroupedPath::kOneDnn);
    paths.push_back(GroupedPath::kOneDnnTransposed);
  }
  if (dnnl_gemm_bf16_function() && dtype == torch::kBFloat16) paths.push_back(GroupedPath::kOneDnn);
  if (streaming_available() && dtype == torch::kFloat) paths.push_back(GroupedPath::kStreaming);
  return paths;
}

bool grouped_mm_available() { return MOELAB_HAVE_GROUPED_MM != 0; }

torch::Tensor grouped_matmul(const torch::Tensor& x, const torch::Tensor& weight,
                             const std::vector<int64_t>& rows_per_expert, GroupedPath path) {
  // Autocast does not see inside a custom autograd function: cast as it would for a matrix product
  // (the casts are differentiable, so float32 masters get float32 gradients).
  if (const auto lower = autocast_dtype(x.device()); lower && (x.scalar_type() != *lower || weight.scalar_type() != *lower))
    return grouped_matmul(x.to(*lower), weight.to(*lower), rows_per_expert, path);
  check_grouped_inputs(x, weight, rows_per_expert);
  const auto resolved = resolve_path(path, GroupedProduct::kForward, x, weight, torch::Tensor(), rows_per_expert);
  if (resolved == GroupedPath::kReference) return grouped_matmul_reference(x, weight, rows_per_expert);
  // The backward follows the policy in force now, even if the process default changes before it runs.
  const auto policy = path == GroupedPath::kAuto ? grouped_path() : path;
  return GroupedMatmul::apply(x, weight, rows_per_expert, static_cast<int64_t>(policy), static_cast<int64_t>(resolved));
}

torch::Tensor grouped_matmul_reference(const torch::Tensor& x, const torch::Tensor& weight,
                                       const std::vector<int64_t>& rows_per_expert) {
  check_grouped_inputs(x, weight, rows_per_expert);
  std::vector<torch::Tensor> blocks;
  int64_t offset = 0;
  for (size_t e = 0; e < rows_per_expert.size(); ++e) {
    const int64_t rows = rows_per_expert[e];
    blocks.push_back(x.narrow(0, offset, rows).mm(weight[static_cast<int64_t>(e)]));
    offset += rows;
  }
  return torch::cat(blocks, 0);
}

}  // namespace moelab
