#include "moelab/dispatch/stream_kernels.h"

#include "moelab/util/error.h"

// The two compilations of stream_kernels.inc (x86-64 only; CMakeLists.txt defines
// MOELAB_HAVE_STREAM_KERNELS where it builds them).
#if MOELAB_HAVE_STREAM_KERNELS
#define MOELAB_DECLARE_STREAM_KERNELS(isa)                                                                        \
  namespace moelab::isa {                                                                                        \
  void stream_forward(const float* x, int64_t rows, const float* w, int64_t in, int64_t out, float* y);          \
  void stream_input_grad(const float* g, int64_t rows, const float* w, int64_t in, int64_t out, float* dx);      \
  void stream_weight_grad(const float* x, const float* g, int64_t rows, int64_t in, int64_t out, float* dw);     \
  }
MOELAB_DECLARE_STREAM_KERNELS(stream_avx512)
MOELAB_DECLARE_STREAM_KERNELS(stream_avx2)
#undef MOELAB_DECLARE_STREAM_KERNELS
#endif

namespace moelab {

StreamIsa stream_kernels_isa() {
#if MOELAB_HAVE_STREAM_KERNELS
  static const StreamIsa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return StreamIsa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return StreamIsa::kAvx2;
    return StreamIsa::kNone;
  }();
  return isa;
#else
  return StreamIsa::kNone;
#endif
}

const char* stream_isa_name(StreamIsa isa) {
  switch (isa) {
    case StreamIsa::kAvx512: return "avx512";
    case StreamIsa::kAvx2: return "avx2";
    case StreamIsa::kNone: return "none";
  }
  return "?";
}

namespace {
// An instruction set this CPU runs and this build has kernels for, or a refusal.
StreamIsa checked(StreamIsa isa) {
  const auto here = stream_kernels_isa();
  if (isa == StreamIsa::kNone || here == StreamIsa::kNone || (isa == StreamIsa::kAvx512 && here != StreamIsa::kAvx512))
    fail("the streaming expert kernels need {} and this CPU or build offers {}", stream_isa_name(isa),
         stream_isa_name(here));
  return isa;
}
}  // namespace

#if MOELAB_HAVE_STREAM_KERNELS
#define MOELAB_STREAM_CALL(function, ...)                                                       \
  (checked(isa) == StreamIsa::kAvx512 ? stream_avx512::function(__VA_ARGS__) \
                                      : stream_avx2::function(__VA_ARGS__))
#else
#define MOELAB_STREAM_CALL(function, ...) (void)checked(isa)
#endif

void stream_forward(const float* x, int64_t rows, const float* w, int64_t in, int64_t out, float* y, StreamIsa isa) {
  MOELAB_STREAM_CALL(stream_forward, x, rows, w, in, out, y);
}

void stream_input_grad(const float* g, int64_t rows, const float* w, int64_t in, int64_t out, float* dx, StreamIsa isa) {
  MOELAB_STREAM_CALL(stream_input_grad, g, rows, w, in, out, dx);
}

void stream_weight_grad(const float* x, const float* g, int64_t rows, int64_t in, int64_t out, float* dw, StreamIsa isa) {
  MOELAB_STREAM_CALL(stream_weight_grad, x, g, rows, in, out, dw);
}

#undef MOELAB_STREAM_CALL

}  // namespace moelab
