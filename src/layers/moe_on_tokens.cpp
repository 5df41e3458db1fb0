#include "moelab/layers/moe_on_tokens.h"

namespace moelab {

MoEOutput moe_on_tokens(MoELayer& moe, const torch::Tensor& x, const torch::Tensor& token_ids,
                        const torch::Tensor& padding) {
  if (!padding.defined()) return moe(x, token_ids);
  const auto kept = padding.logical_not().nonzero().squeeze(1);  // [N'] positions of real tokens
  auto out = moe(x.index_select(0, kept), token_ids.defined() ? token_ids.index_select(0, kept) : token_ids);
  out.output = torch::zeros_like(x).index_copy(0, kept, out.output);
  return out;
}

}  // namespace moelab
