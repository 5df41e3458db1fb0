#include "moelab/routing/hash_router.h"

#include "moelab/routing/linear_gate_router.h"
#include "moelab/util/error.h"
#include "moelab/util/mix64.h"

namespace moelab {

int64_t hash_expert(int64_t token_id, int64_t num_experts) {
  // Mixed, so consecutive ids (frequent words get small ids) land far apart.
  return static_cast<int64_t>(mix64(static_cast<uint64_t>(token_id)) % static_cast<uint64_t>(num_experts));
}

HashRouter::HashRouter(const RouterOptions& options_) : options(options_) {
  check_router_sizes(options);
  check_k_fits(options);
}

Routing HashRouter::compute(const torch::Tensor& x, const torch::Tensor& token_ids) {
  const int64_t n = token_ids.size(0), k = options.k(), e = options.num_experts();
  auto index = torch::empty({n, k}, torch::kInt64);
  const auto ids = token_ids.to(torch::kCPU, torch::kInt64).contiguous();
  const auto* id = ids.data_ptr<int64_t>();
  auto* out = index.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t first = hash_expert(id[i], e);
    for (int64_t j = 0; j < k; ++j) out[i * k + j] = (first + j) % e;
  }
  const auto float_options = routing_precision(x).options();
  return routing_from_slots(index.to(x.device()), torch::full({n, k}, 1.0 / static_cast<double>(k), float_options), e);
}

void HashRouter::pretty_print(std::ostream& stream) const {
  stream << "moelab::HashRouter(experts=" << options.num_experts() << ", k=" << options.k() << ")";
}

}  // namespace moelab
