// The streaming expert kernels against LibTorch's float64 products, in every compilation this CPU
// runs (an AVX-512 machine runs the AVX2 one too), at widths that leave every kind of remainder:
// fewer columns than a vector, a vector and a bit, whole register blocks; row counts below, at and
// above one pass of rows; and a weight gradient that cannot be streamed (unaligned).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "moelab/dispatch/stream_kernels.h"
#include "moelab/util/error.h"

using namespace moelab;

namespace {

std::vector<StreamIsa> runnable_isas() {
  switch (stream_kernels_isa()) {
    case StreamIsa::kAvx512: return {StreamIsa::kAvx512, StreamIsa::kAvx2};
    case StreamIsa::kAvx2: return {StreamIsa::kAvx2};
    case StreamIsa::kNone: return {};
  }
  return {};
}

bool close(const torch::Tensor& fast, const torch::Tensor& exact) {
  return torch::allclose(fast.to(torch::kDouble), exact, 1e-5, 1e-5);
}

}  // namespace

TEST(StreamKernels, EachProductMatchesFloat64InEveryCompilation) {
  const auto isas = runnable_isas();
  if (isas.empty()) GTEST_SKIP() << "no streaming kernels on this CPU or build";
  torch::manual_seed(11);
  for (const auto isa : isas)
    for (const int64_t rows : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17, 24, 32, 40})
      for (const int64_t in : {1, 2, 5, 33})
        for (const int64_t out : {1, 15, 16, 47, 64, 100, 160}) {
          SCOPED_TRACE(testing::Message() << stream_isa_name(isa) << " rows " << rows << " in " << in << " out " << out);
          const auto x = torch::randn({rows, in});
          const auto w = torch::randn({in, out});
          const auto g = torch::randn({rows, out});
          const auto xd = x.to(torch::kDouble), wd = w.to(torch::kDouble), gd = g.to(torch::kDouble);

          auto y = torch::full({rows, out}, 7.0f);  // stale values must not leak into the result
          stream_forward(x.data_ptr<float>(), rows, w.data_ptr<float>(), in, out, y.data_ptr<float>(), isa);
          EXPECT_TRUE(close(y, xd.mm(wd)));

          auto dx = torch::full({rows, in}, 7.0f);
          stream_input_grad(g.data_ptr<float>(), rows, w.data_ptr<float>(), in, out, dx.data_ptr<float>(), isa);
          EXPECT_TRUE(close(dx, gd.mm(wd.t())));

          // Aligned (streamed when the width allows) and one float off (plain stores).
          auto buffer = torch::full({in * out + 1}, 7.0f);
          for (const int64_t shift : {0, 1}) {
            float* dw = buffer.data_ptr<float>() + shift;
            stream_weight_grad(x.data_ptr<float>(), g.data_ptr<float>(), rows, in, out, dw, isa);
            EXPECT_TRUE(close(buffer.narrow(0, shift, in * out).view({in, out}), xd.t().mm(gd))) << "shift " << shift;
          }
        }
}

TEST(StreamKernels, RefuseAnInstructionSetTheyCannotRun) {
  float x = 1.0f, w = 2.0f, y = 0.0f;
  EXPECT_THROW(stream_forward(&x, 1, &w, 1, 1, &y, StreamIsa::kNone), moelab::Error);
  if (stream_kernels_isa() == StreamIsa::kAvx2) {
    EXPECT_THROW(stream_forward(&x, 1, &w, 1, 1, &y, StreamIsa::kAvx512), moelab::Error);
  }
}
