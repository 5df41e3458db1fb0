// stream_kernels.inc compiled for AVX2 with FMA (see CMakeLists.txt): 8-float vectors in 16 ymm
// registers: six rows per pass with two vectors of columns (12 accumulators), three weight-gradient
// rows, and the input gradient in its transposed form from 3 rows. Measured on an AVX-512 machine
// running this compilation (one thread, 1,024 rows over 512 -> 1,024 experts' weights, GFLOP/s at
// 8 / 32 rows per expert): forward 24 / 32, weight gradient 43 / 40, input gradient 50 / 56; with
// 16-float vectors (before) the forward ran at 9.
#define MOELAB_STREAM_NAMESPACE stream_avx2
#define MOELAB_STREAM_LANES 8
#define MOELAB_STREAM_ROW_BLOCK 6
#define MOELAB_STREAM_COLUMN_VECTORS 2
#define MOELAB_STREAM_GRAD_ROWS 3
#define MOELAB_STREAM_TRANSPOSED_FROM_ROWS 3
#include "stream_kernels.inc"
