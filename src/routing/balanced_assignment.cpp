#include "moelab/routing/balanced_assignment.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <set>
#include <utility>

namespace moelab {

std::vector<int64_t> balanced_capacities(int64_t num_tokens, int64_t num_experts) {
  std::vector<int64_t> capacity(num_experts, num_tokens / num_experts);
  for (int64_t e = 0; e < num_tokens % num_experts; ++e) ++capacity[e];
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
  const auto a_tensor = affinity.detach().to(torch::kCPU, torch::kDouble).contiguous();
  const int64_t n = a_tensor.size(0), e = a_tensor.size(1);
  auto result = torch::zeros({n}, torch::kInt64);
  if (n == 0 || e == 1) return result;
  const double* a = a_tensor.data_ptr<double>();
  const double range = std::max(a_tensor.max().item<double>() - a_tensor.min().item<double>(), 1e-12);
  const double final_epsilon = range * relative_tolerance;

  std::vector<ExpertSeats> experts;
  for (int64_t seats : balanced_capacities(n, e)) experts.emplace_back(seats);
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
