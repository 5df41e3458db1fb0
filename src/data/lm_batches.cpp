#include "moelab/data/lm_batches.h"

#include <torch/torch.h>

#include <algorithm>

#include "moelab/util/error.h"

namespace moelab {

LmBatches::LmBatches(const torch::Tensor& stream, int64_t batch, int64_t bptt) : bptt_(bptt), num_windows_(0) {
  if (batch <= 0) fail("batch size must be positive, got {}", batch);
  if (bptt <= 0) fail("bptt must be positive, got {}", bptt);
  if (!stream.defined()) fail("the token stream is empty (undefined tensor)");
  if (stream.dim() != 1) fail("the token stream must be 1-D, got {} dimensions", stream.dim());
  if (stream.is_floating_point() || stream.is_complex() || stream.scalar_type() == torch::kBool) {
    fail("the token stream must hold integer token ids, got dtype {}", std::string(c10::toString(stream.scalar_type())));
  }
  const int64_t tokens = stream.numel();
  if (tokens < batch * 2) {
    fail("corpus has {} tokens, fewer than one batch ({} columns x 2 tokens = {}); use a smaller batch size",
         tokens, batch, batch * 2);
  }
  const int64_t length = tokens / batch;  // L: tokens per column, >= 2
  columns_ = stream.to(torch::kInt64).slice(0, 0, length * batch).reshape({batch, length}).t().contiguous();
  num_windows_ = (length - 1 + bptt - 1) / bptt;
}

LmWindow LmBatches::window(int64_t i) const {
  if (i < 0 || i >= num_windows_) fail("window {} is out of range [0, {})", i, num_windows_);
  const int64_t length = columns_.size(0);
  const int64_t start = i * bptt_;
  const int64_t end = std::min(start + bptt_, length - 1);
  return {columns_.slice(0, start, end), columns_.slice(0, start + 1, end + 1)};
}

int64_t LmBatches::tokens_through(int64_t steps) const {
  const int64_t per_column = columns_.size(0) - 1;  // targets per column in one epoch
  const int64_t columns = columns_.size(1);
  const int64_t epochs = steps / num_windows_, rest = steps % num_windows_;
  return (epochs * per_column + std::min(rest * bptt_, per_column)) * columns;
}

}  // namespace moelab
