#include "moelab/routing/routing.h"

#include "moelab/device/precision.h"

#include "moelab/util/error.h"

namespace moelab {

Routing Router::route(const torch::Tensor& x, const torch::Tensor& token_ids) {
  if (needs_token_ids()) {
    if (!token_ids.defined()) fail("this router (hash) needs the token ids; the model did not pass them");
    TORCH_CHECK(token_ids.dim() == 1 && token_ids.size(0) == x.size(0), "token ids must be [N] with N = ",
                x.size(0), ", got ", token_ids.sizes());
  }
  // Selective precision: the router's logits, softmax and top-k stay float32 even inside a bf16
  // autocast region (routing decisions are where low precision hurts most, Fedus et al. 2021).
  const bool lowered = autocast_dtype(x.device()).has_value();
  const Float32Scope float32(x.device());
  return compute(lowered ? x.to(torch::kFloat32) : x, token_ids);
}

}  // namespace moelab
