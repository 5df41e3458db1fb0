#include "moelab/routing/routing.h"

#include "moelab/util/error.h"

namespace moelab {

Routing Router::route(const torch::Tensor& x, const torch::Tensor& token_ids) {
  if (needs_token_ids()) {
    if (!token_ids.defined()) fail("this router (hash) needs the token ids; the model did not pass them");
    TORCH_CHECK(token_ids.dim() == 1 && token_ids.size(0) == x.size(0), "token ids must be [N] with N = ",
                x.size(0), ", got ", token_ids.sizes());
  }
  return compute(x, token_ids);
}

}  // namespace moelab
