// stream_kernels.inc compiled for AVX2 with FMA (see CMakeLists.txt): a 16-float vector is two ymm
// registers, and there are 16 of them, so four rows per pass and one vector of columns per block.
#define MOELAB_STREAM_NAMESPACE stream_avx2
#define MOELAB_STREAM_ROW_BLOCK 4
#define MOELAB_STREAM_COLUMN_VECTORS 1
#define MOELAB_STREAM_GRAD_ROWS 2
#include "stream_kernels.inc"
