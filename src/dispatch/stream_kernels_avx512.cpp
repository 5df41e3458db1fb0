// stream_kernels.inc compiled for AVX-512F (see CMakeLists.txt): eight rows per pass, each row's
// accumulators two zmm registers wide (16 of the 32 registers); the input gradient in its transposed
// form from 5 rows (at 4 and fewer the dot-product form measured faster: 19.2 against 23.9 ms).
#define MOELAB_STREAM_NAMESPACE stream_avx512
#define MOELAB_STREAM_LANES 16
#define MOELAB_STREAM_ROW_BLOCK 8
#define MOELAB_STREAM_COLUMN_VECTORS 2
#define MOELAB_STREAM_GRAD_ROWS 4
#define MOELAB_STREAM_TRANSPOSED_FROM_ROWS 5
#include "stream_kernels.inc"
