#include "moelab/data/packed_batches.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "moelab/util/error.h"

namespace moelab {

std::vector<std::vector<int64_t>> length_grouped_batches(const std::vector<int64_t>& lengths, int64_t batch_size,
                                                         int64_t shuffle_seed) {
  if (batch_size <= 0) fail("batch size must be positive, got {}", batch_size);
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return lengths[static_cast<size_t>(a)] > lengths[static_cast<size_t>(b)]; });
  std::vector<std::vector<int64_t>> batches;
  for (size_t start = 0; start < order.size(); start += static_cast<size_t>(batch_size)) {
    const size_t end = std::min(order.size(), start + static_cast<size_t>(batch_size));
    batches.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(start), order.begin() + static_cast<std::ptrdiff_t>(end));
  }
  if (shuffle_seed >= 0) {
    std::mt19937_64 generator(static_cast<uint64_t>(shuffle_seed));
    std::shuffle(batches.begin(), batches.end(), generator);
  }
  return batches;
}

PackedBatch pack_sequences(const std::vector<const std::vector<int64_t>*>& sequences) {
  if (sequences.empty()) fail("cannot pack an empty batch");
  const auto longest = static_cast<int64_t>(sequences.front()->size());
  std::vector<int64_t> batch_sizes(static_cast<size_t>(longest), 0);
  for (size_t b = 0; b < sequences.size(); ++b) {
    const auto length = static_cast<int64_t>(sequences[b]->size());
    if (length == 0) fail("cannot pack an empty sequence (batch position {})", b);
    if (b > 0 && length > static_cast<int64_t>(sequences[b - 1]->size()))
      fail("sequences must be packed longest first");
    for (int64_t t = 0; t < length; ++t) ++batch_sizes[static_cast<size_t>(t)];
  }
  PackedBatch packed;
  packed.rows.resize(sequences.size());
  std::vector<int64_t> values;
  for (int64_t t = 0; t < longest; ++t)
    for (int64_t b = 0; b < batch_sizes[static_cast<size_t>(t)]; ++b) {
      packed.rows[static_cast<size_t>(b)].push_back(static_cast<int64_t>(values.size()));
      values.push_back((*sequences[static_cast<size_t>(b)])[static_cast<size_t>(t)]);
    }
  packed.values = torch::tensor(values, torch::kLong);
  packed.batch_sizes = torch::tensor(batch_sizes, torch::kLong);
  return packed;
}

}  // namespace moelab
