#include "moelab/layers/norm.h"

#include "moelab/util/error.h"

namespace moelab {

NormImpl::NormImpl(const std::string& kind_, int64_t dim, double eps_) : kind(kind_), eps(eps_) {
  if (kind != "layernorm" && kind != "rmsnorm") fail("unknown model.norm '{}' (known: layernorm, rmsnorm)", kind);
  weight = register_parameter("weight", torch::ones({dim}));
  if (kind == "layernorm") bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor rms_normalised(const torch::Tensor& x, double eps) {
  const bool reduced = x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kHalf;
  const auto wide = reduced ? x.to(torch::kFloat32) : x;  // a double input keeps its precision
  return (wide * torch::rsqrt(wide.pow(2).mean(-1, /*keepdim=*/true) + eps)).to(x.scalar_type());
}

torch::Tensor NormImpl::forward(const torch::Tensor& x) {
  if (kind == "layernorm") return torch::layer_norm(x, {x.size(-1)}, weight, bias, eps);
  return rms_normalised(x, eps) * weight;
}

}  // namespace moelab
