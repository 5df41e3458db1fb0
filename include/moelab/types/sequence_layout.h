// Where the rows of a flat token batch sit in their sequences. Most of an MoE layer treats tokens
// independently, but two things need the sequences back: Soft MoE, whose slots average the tokens
// of one sequence, and the sequence-level balance loss, which balances every sequence on its own.
//
// Rows are positions of a time-major [length, batch] grid (grid row t * batch + b is position t of
// sequence b), the layout of every backbone here; `grid_position` lists which grid rows the flat
// batch holds, in its order (padding left out, or a packed batch), or is undefined when it holds
// the whole grid in order.
#pragma once
#include <torch/types.h>

#include <cstdint>

namespace moelab {

struct SequenceLayout {
  int64_t length = 0;           // T: positions per sequence (the longest one)
  int64_t batch = 0;            // B: sequences
  torch::Tensor grid_position;  // [N] int64, or undefined (N = T * B, all rows in order)

  bool defined() const { return batch > 0; }
  // Rows the flat batch has.
  int64_t rows() const { return grid_position.defined() ? grid_position.size(0) : length * batch; }
  // [N] int64 on `device`: the grid row of every flat row.
  torch::Tensor grid_rows(const torch::Device& device) const;
  // [N] int64 on `device`: the sequence b of every flat row.
  torch::Tensor sequence_of_rows(const torch::Device& device) const;

  // The whole [length, batch] grid.
  static SequenceLayout grid(int64_t length, int64_t batch);
  // The real positions of a padded grid: padding [T, B] bool, true at padding.
  static SequenceLayout without_padding(const torch::Tensor& padding);
  // A packed batch (torch::nn::utils::rnn): batch_sizes [T] int64 on the CPU, rows of time t
  // holding sequences 0 .. batch_sizes[t] - 1 (sorted longest first).
  static SequenceLayout packed(const torch::Tensor& batch_sizes);
};

}  // namespace moelab
