// How a grouped product over expert blocks is executed. Three ways compute the same numbers; which
// is fastest depends on the shape (rows per expert, widths, cores) and the machine, so the choice is
// measured, not guessed (see GroupedPath::kAuto).
//
// Shape legend: M rows, E experts, I input width, O output width, C padded rows per expert.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moelab {

enum class GroupedPath {
  kAuto,      // time the three below on the first product of each shape class, keep the fastest
  kLoop,      // one GEMM per expert in turn, each GEMM using every core (best for large blocks)
  kParallel,  // experts split over the cores by row count, each GEMM on one core (many small blocks)
  kPaddedBmm,  // blocks copied into [E, C, I] with C = the largest block, one batched matmul
  kOneDnn,     // one GEMM per expert through oneDNN's sgemm (JIT kernels that stay fast for blocks of
               // a few rows, where OpenBLAS's packing dominates); only where LibTorch's oneDNN
               // exports dnnl_sgemm (Debian's does), float32 on the CPU
  kOneDnnTransposed,  // as kOneDnn, but each block computed as its transpose (C^T = B^T A^T) into a
                      // scratch buffer and copied back: the expert's weight becomes oneDNN's left
                      // operand. oneDNN multiplies a few rows by a transposed weight (the input
                      // gradient) 3x slower than the same product turned around (E = 64, 32 rows)
  kStreaming,  // blocks of a few rows (<= 32) through the streaming kernels (stream_kernels.h: each
               // weight element read once, in address order; weight gradients written once, past the
               // cache), larger blocks through one GEMM each, experts split over the cores; float32
               // on x86-64 CPUs with AVX2 or AVX-512 (elsewhere it runs the loop)
  kGroupedMm,  // one call to LibTorch's grouped matrix product (at::_grouped_mm, LibTorch >= 2.8): on
               // a GPU of compute capability >= 9.0 one kernel for every expert in bf16; chosen by
               // kAuto there, available anywhere LibTorch has the operator (elsewhere it loops)
  kReference   // autograd through per-expert slices: the test oracle, never chosen by kAuto (slow:
               // each slice's backward writes a full-size weight gradient)
};

// "auto", "loop", "parallel", "bmm", "onednn", "onednn_transposed", "streaming", "grouped_mm", "reference"
GroupedPath parse_grouped_path(const std::string& name);
std::string grouped_path_name(GroupedPath path);
// Every path's name, in the order above: the one list the config check and help texts print.
const std::vector<std::string>& grouped_path_names();

// Process-wide default used by grouped_matmul() when no path is given (like at::set_num_threads).
// Set from the config key train.grouped_path; kAuto unless changed.
void set_grouped_path(GroupedPath path);
GroupedPath grouped_path();

// The three products of a grouped matrix product with weight [E, I, O] and rows [M, I]: the forward
// (rows @ W[e]), the input gradient (grad @ W[e]^T) and the weight gradient (rows^T @ grad). They
// favour different kernels (a kernel fast for one can be 3x slower for another), so kAuto chooses
// for each on its own.
enum class GroupedProduct { kForward, kInputGrad, kWeightGrad };
// "forward", "input_grad", "weight_grad"
std::string grouped_product_name(GroupedProduct product);

// Shape class that kAuto decides per: device, element type, E, I, O of the stored weight, the
// average rows per expert rounded to a power of two, and which of the three products. Steps of one
// run fall into one class, so the measurement happens once per run (and once per machine with a
// saved choice, grouped_path_cache.h).
struct GroupedShape {
  int device_type = 0;
  int scalar_type = 0;
  int64_t experts = 0, in_width = 0, out_width = 0, rows_bucket = 0;
  GroupedProduct product = GroupedProduct::kForward;
  bool operator<(const GroupedShape& other) const;
  // e.g. "cpu float E=8 I=512 O=1024 rows=256" for the forward (the key choices were saved under
  // before the products were told apart), "... rows=256 product=input_grad" for the others
  std::string key() const;
};
// x: an operand with the product's M rows (x or grad_out; only its row count, element type and
// device matter, and they are the same for all three products).
GroupedShape grouped_shape_of(const torch::Tensor& x, const torch::Tensor& weight,
                              const std::vector<int64_t>& rows_per_expert,
                              GroupedProduct product = GroupedProduct::kForward);

// The path kAuto has chosen for a shape class, or kAuto if it has not measured that class yet.
GroupedPath chosen_grouped_path(const GroupedShape& shape);

// A choice of kAuto, with what each candidate measured (best of three of the shape's product, ms) and
// whether this process measured it or read it from the saved choices of earlier processes.
struct GroupedChoice {
  GroupedShape shape;
  GroupedPath path = GroupedPath::kAuto;
  std::vector<std::pair<GroupedPath, double>> measured_ms;
  bool saved = false;  // read from the cache (grouped_path_cache.h), not measured here
};
// Record a choice (the measurement is done by grouped_matmul, which owns the kernels).
void remember_grouped_path(const GroupedChoice& choice);

std::vector<GroupedChoice> grouped_path_choices();
// Forget every measured choice (benchmarks re-measure after changing thread counts).
void forget_grouped_paths();

}  // namespace moelab
