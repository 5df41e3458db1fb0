// stream_kernels.inc compiled for AVX-512F (see CMakeLists.txt): eight rows per pass, each row's
// accumulators two zmm registers wide (16 of the 32 registers).
#define MOELAB_STREAM_NAMESPACE stream_avx512
#define MOELAB_STREAM_ROW_BLOCK 8
#define MOELAB_STREAM_COLUMN_VECTORS 2
#define MOELAB_STREAM_GRAD_ROWS 4
#include "stream_kernels.inc"
