// Batching for LSTM language models (Zaremba et al. 2014 style): the token stream is cut into
// `batch` contiguous columns, read in truncated-BPTT windows of `bptt` steps; the trainer carries
// the hidden state from one window to the next.
//
// Shape legend: T window length (<= bptt), B batch columns.
#pragma once
#include <torch/types.h>

#include <cstdint>

namespace moelab {

struct LmWindow {
  torch::Tensor input;   // [T, B] int64
  torch::Tensor target;  // [T, B] int64, input shifted by one token
  // Columns [first, first + count): one rank's share of a batch.
  LmWindow columns(int64_t first, int64_t count) const {
    return {input.narrow(1, first, count), target.narrow(1, first, count)};
  }
};

class LmBatches {
 public:
  // Throws Error when batch <= 0, bptt <= 0 or the stream holds fewer than batch * 2 tokens (no
  // window of even one step would fit): "corpus has N tokens, fewer than one batch (...)".
  LmBatches(const torch::Tensor& stream, int64_t batch, int64_t bptt);

  int64_t num_windows() const { return num_windows_; }
  // Target tokens (all columns) in the first `steps` windows when training walks the windows in
  // order, epoch after epoch: the last window of an epoch is shorter.
  int64_t tokens_through(int64_t steps) const;
  int64_t num_columns() const { return columns_.size(1); }
  int64_t tokens_per_column() const { return columns_.size(0); }
  // Window i (0 <= i < num_windows()): rows [i*bptt, min((i+1)*bptt, L-1)) of the column matrix.
  LmWindow window(int64_t i) const;

 private:
  torch::Tensor columns_;  // [L, B]
  int64_t bptt_;
  int64_t num_windows_;
};

}  // namespace moelab
