#include "moelab/types/sequence_layout.h"

#include "moelab/util/error.h"

namespace moelab {

torch::Tensor SequenceLayout::grid_rows(const torch::Device& device) const {
  if (grid_position.defined()) return grid_position.to(device);
  return torch::arange(length * batch, torch::TensorOptions().dtype(torch::kInt64).device(device));
}

torch::Tensor SequenceLayout::sequence_of_rows(const torch::Device& device) const {
  if (!defined()) fail("the MoE layer was given no sequence layout");
  return grid_rows(device).remainder(batch);
}

SequenceLayout SequenceLayout::grid(int64_t length, int64_t batch) {
  SequenceLayout layout;
  layout.length = length;
  layout.batch = batch;
  return layout;
}

SequenceLayout SequenceLayout::without_padding(const torch::Tensor& padding) {
  TORCH_CHECK(padding.dim() == 2, "padding must be [T, B], got ", padding.sizes());
  auto layout = grid(padding.size(0), padding.size(1));
  layout.grid_position = padding.reshape({-1}).logical_not().nonzero().squeeze(1);
  return layout;
}

SequenceLayout SequenceLayout::packed(const torch::Tensor& batch_sizes) {
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.size(0) > 0, "batch_sizes must be a non-empty [T]");
  const auto sizes = batch_sizes.to(torch::kCPU).to(torch::kInt64).contiguous();
  const auto* size = sizes.data_ptr<int64_t>();
  auto layout = grid(sizes.size(0), size[0]);
  std::vector<torch::Tensor> rows;
  rows.reserve(static_cast<size_t>(layout.length));
  for (int64_t t = 0; t < layout.length; ++t) rows.push_back(torch::arange(size[t], torch::kInt64) + t * layout.batch);
  layout.grid_position = torch::cat(rows);
  return layout;
}

}  // namespace moelab
