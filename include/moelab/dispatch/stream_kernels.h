// Products of a few rows with one expert's weight, for the memory-bound regime of many experts and
// few tokens each (E = 256, k = 1: 8 rows per expert). There a GEMM library's packing and blocking
// buy nothing: every weight element is used by 8 rows only, so the product costs what reading (or,
// for the weight gradient, writing) the weight costs. These kernels touch each weight element once,
// in address order, and write a weight gradient with non-temporal stores (no read of the line it
// overwrites). Blocks with more rows are the GEMM libraries' (GroupedPath::kStreaming sends them
// there).
//
// Row-major float32 on raw pointers, every operand contiguous. Shape legend: R rows, I input
// width, O output width.
#pragma once
#include <cstdint>

namespace moelab {

// The vector instructions the kernels run with on this CPU (checked once): AVX-512F, else AVX2 with
// FMA, else none (then the kernels are unavailable and GroupedPath::kStreaming is not offered).
enum class StreamIsa { kNone, kAvx2, kAvx512 };
StreamIsa stream_kernels_isa();
const char* stream_isa_name(StreamIsa isa);  // "none", "avx2", "avx512"

// `isa`: the compilation to run (tests run both on a CPU that has both); one this CPU lacks, or
// kNone, is refused with moelab::Error.
// y [R, O] = x [R, I] w [I, O]
void stream_forward(const float* x, int64_t rows, const float* w, int64_t in, int64_t out, float* y,
                    StreamIsa isa = stream_kernels_isa());
// dx [R, I] = g [R, O] w [I, O]^T. From a few rows on computed as dx^T = w g^T on transposed copies
// of g and dx (R x (I + O) floats, allocated per call; the dot-product form when that fails).
void stream_input_grad(const float* g, int64_t rows, const float* w, int64_t in, int64_t out, float* dx,
                       StreamIsa isa = stream_kernels_isa());
// dw [I, O] = x [R, I]^T g [R, O]; zeros when R = 0. dw is written once, not read.
void stream_weight_grad(const float* x, const float* g, int64_t rows, int64_t in, int64_t out, float* dw,
                        StreamIsa isa = stream_kernels_isa());

}  // namespace moelab
