#include "moelab/layers/norm.h"

#include "moelab/util/error.h"

namespace moelab {

NormImpl::NormImpl(const std::string& kind_, int64_t dim, double eps_) : kind(kind_), eps(eps_) {
  if (kind != "layernorm" && kind != "rmsnorm") fail("unknown model.norm '{}' (known: layernorm, rmsnorm)", kind);
  weight = register_parameter("weight", torch::ones({dim}));
  if (kind == "layernorm") bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor NormImpl::forward(const torch::Tensor& x) {
  if (kind == "layernorm") return torch::layer_norm(x, {x.size(-1)}, weight, bias, eps);
  // Statistics in float32 whatever x's type: the mean of squares is where bf16 loses most.
  const auto x32 = x.to(torch::kFloat32);
  const auto scaled = x32 * torch::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return scaled.to(x.scalar_type()) * weight;
}

}  // namespace moelab
