#include "moelab/experts/tensor_chain.h"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>

#include "moelab/util/error.h"

namespace moelab {

int64_t product(const std::vector<int64_t>& factors) {
  int64_t out = 1;
  for (auto f : factors) out *= f;
  return out;
}

std::vector<int64_t> chain_bond_sizes(const std::vector<int64_t>& mode_sizes, int64_t max_bond) {
  std::vector<int64_t> bonds;
  const int64_t total = product(mode_sizes);
  int64_t left = 1;
  for (size_t k = 0; k + 1 < mode_sizes.size(); ++k) {
    left *= mode_sizes[k];
    bonds.push_back(std::min({max_bond, left, total / left}));
  }
  return bonds;
}

std::vector<int64_t> chain_bond_sizes_with_ends(const std::vector<int64_t>& mode_sizes, int64_t max_bond) {
  auto bonds = chain_bond_sizes(mode_sizes, max_bond);
  bonds.insert(bonds.begin(), 1);
  bonds.push_back(1);
  return bonds;
}

torch::Tensor contract_chain(const std::vector<torch::Tensor>& cores) {
  TORCH_CHECK(!cores.empty(), "contract_chain needs at least one core");
  // running: [E?, a_0 * modes so far, a_k] -- the left bond folded into the rows.
  const auto& first = cores.front();
  const bool first_stacked = first.dim() == 4;
  const int64_t a0 = first.size(first_stacked ? 1 : 0);
  auto running = first_stacked ? first.reshape({first.size(0), -1, first.size(3)}) : first.reshape({-1, first.size(2)});
  for (size_t k = 1; k < cores.size(); ++k) {
    const auto& core = cores[k];
    const bool stacked = core.dim() == 4;
    const int64_t a = core.size(stacked ? 1 : 0), b = core.size(stacked ? 3 : 2);
    const auto right = stacked ? core.reshape({core.size(0), a, -1}) : core.reshape({a, -1});  // [E?, a, n b]
    running = torch::matmul(running, right);                                                   // [E?, P, n b]
    running = running.dim() == 3 ? running.reshape({running.size(0), -1, b}) : running.reshape({-1, b});
  }
  // Unfold the left bond back out of the rows.
  if (running.dim() == 3) return running.reshape({running.size(0), a0, -1, running.size(2)});
  return running.reshape({a0, -1, running.size(1)});
}

int64_t chain_contraction_flops(const std::vector<int64_t>& mode_sizes, const std::vector<int64_t>& bonds) {
  int64_t flops = 0, rows = bonds.front() * (mode_sizes.empty() ? 1 : mode_sizes.front());
  for (size_t k = 1; k < mode_sizes.size(); ++k) {
    flops += 2 * rows * bonds[k] * mode_sizes[k] * bonds[k + 1];
    rows *= mode_sizes[k];
  }
  return flops;
}

void check_factorisation(const std::vector<int64_t>& factors, int64_t size, const std::string& what) {
  if (factors.empty()) fail("{} is empty; give factors that multiply to {}", what, size);
  for (auto f : factors)
    if (f < 1) fail("{} = [{}] has a factor < 1", what, fmt::join(factors, ", "));
  if (product(factors) != size)
    fail("{} = [{}] multiplies to {}, not {}", what, fmt::join(factors, ", "), product(factors), size);
}

}  // namespace moelab
