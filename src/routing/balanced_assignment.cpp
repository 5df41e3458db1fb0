#include "moelab/routing/balanced_assignment.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <set>
#include <utility>

#include "moelab/util/error.h"

namespace moelab {

std::vector<int64_t> balanced_capacities(int64_t num_tokens, int64_t num_experts, int64_t first_extra) {
  std::vector<int64_t> capacity(num_experts, num_tokens / num_experts);
  for (int64_t i = 0; i < num_tokens % num_experts; ++i) ++capacity[(first_extra + i) % num_experts];
  return capacity;
}

namespace {

// One expert's seats: their prices and who holds each. `by_price` orders seats cheapest first.
struct ExpertSeats {
  std::vector<double> price;
  std::vector<int64_t> holder;
  std::set<std::pair<double, int64_t>> by_price;  // (price, seat)

  explicit ExpertSeats(int64_t seats) : price(seats, 0.0), holder(seats, -1) {
    for (int64_t s = 0; s < seats; ++s) by_price.insert({0.0, s});
  }
  double cheapest() const { return by_price.begin()->first; }
  // Price of the second-cheapest seat, or +inf when there is only one.
  double second_cheapest() const {
    if (by_price.size() < 2) return std::numeric_limits<double>::infinity();
    return std::next(by_price.begin())->first;
  }
};

}  // namespace

torch::Tensor balanced_assignment(const torch::Tensor& affinity, double relative_tolerance) {
  TORCH_CHECK(affinity.dim() == 2, "balanced_assignment expects affinity [N, E], got ", affinity.sizes());
  TORCH_CHECK(relative_tolerance > 0, "balanced_assignment needs relative_tolerance > 0");
  const auto a_tensor = affinity.detach().to(torch::kCPU, torch::kDouble).contiguous();
  const int64_t n = a_tensor.size(0), e = a_tensor.size(1);
  auto result = torch::zeros({n}, torch::kInt64);
  if (n == 0 || e == 1) return result;
  if (!torch::isfinite(a_tensor).all().item<bool>())
    fail("BASE routing: the router produced NaN or infinite affinities (diverged training?)");
  const double* a = a_tensor.data_ptr<double>();
  const double range = std::max(a_tensor.max().item<double>() - a_tensor.min().item<double>(), 1e-12);
  const double final_epsilon = range * relative_tolerance;

  std::vector<ExpertSeats> experts;
  // The N mod E spare seats start at a random expert, so with N < E (or uneven N) no expert is
  // starved of tokens for the whole run.
  const int64_t first_extra = n % e == 0 ? 0 : torch::randint(e, {1}, torch::kInt64).item<int64_t>();
  for (int64_t seats : balanced_capacities(n, e, first_extra)) experts.emplace_back(seats);
  std::vector<int64_t> expert_of(n, -1), seat_of(n, -1);

  for (double epsilon = range / 8.0;; epsilon = std::max(epsilon / 8.0, final_epsilon)) {
    // A new phase frees every seat but keeps the prices learnt so far.
    for (auto& seats : experts) std::fill(seats.holder.begin(), seats.holder.end(), -1);
    std::deque<int64_t> unassigned;
    for (int64_t t = 0; t < n; ++t) unassigned.push_back(t);
    while (!unassigned.empty()) {
      const int64_t token = unassigned.front();
      unassigned.pop_front();
      const double* row = a + token * e;
      int64_t best = -1;
      double best_value = -std::numeric_limits<double>::infinity();
      double second_value = -std::numeric_limits<double>::infinity();
      for (int64_t x = 0; x < e; ++x) {
        if (experts[x].price.empty()) continue;  // an expert with no seats (N < E)
        const double value = row[x] - experts[x].cheapest();
        if (value > best_value) {
          second_value = best_value;
          best_value = value;
          best = x;
        } else if (value > second_value) {
          second_value = value;
        }
      }
      TORCH_CHECK(best >= 0, "balanced_assignment: no expert has a seat");
      auto& seats = experts[best];
      // The next best option may be another seat of the same expert.
      second_value = std::max(second_value, row[best] - seats.second_cheapest());
      const double raise = std::isfinite(second_value) ? best_value - second_value + epsilon : epsilon;
      const auto [old_price, seat] = *seats.by_price.begin();
      seats.by_price.erase(seats.by_price.begin());
      seats.price[seat] = old_price + raise;
      seats.by_price.insert({seats.price[seat], seat});
      if (seats.holder[seat] >= 0) unassigned.push_back(seats.holder[seat]);
      seats.holder[seat] = token;
      expert_of[token] = best;
      seat_of[token] = seat;
    }
    if (epsilon <= final_epsilon) break;
  }
  auto* out = result.data_ptr<int64_t>();
  for (int64_t t = 0; t < n; ++t) out[t] = expert_of[t];
  return result;
}

}  // namespace moelab
