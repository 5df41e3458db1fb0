#include "moelab/layers/moe_on_tokens.h"

namespace moelab {

MoEOutput moe_on_tokens(MoELayer& moe, const torch::Tensor& x, const torch::Tensor& token_ids,
                        const torch::Tensor& padding) {
  TORCH_CHECK(x.dim() == 3, "moe_on_tokens expects x [T, B, D], got ", x.sizes());
  const int64_t length = x.size(0), batch = x.size(1);
  const auto flat = x.reshape({length * batch, x.size(2)});
  const auto ids = token_ids.defined() ? token_ids.reshape({-1}) : token_ids;
  if (!padding.defined()) return moe(flat, ids, SequenceLayout::grid(length, batch));
  const auto layout = SequenceLayout::without_padding(padding.reshape({length, batch}));
  const auto& kept = layout.grid_position;  // [N'] rows of the real tokens
  auto out = moe(flat.index_select(0, kept), ids.defined() ? ids.index_select(0, kept) : ids, layout);
  out.output = torch::zeros_like(flat).index_copy(0, kept, out.output);
  return out;
}

}  // namespace moelab
