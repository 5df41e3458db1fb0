// Batches of variable-length sequences without padding waste: sequences are grouped by length, and
// a batch is packed time-major exactly as LibTorch's PackedSequence wants (all first tokens, then
// all second tokens of the sequences that have one, ...), so LSTMs, the MoE layer and the loss see
// only real tokens.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace moelab {

// Example indices grouped into batches of up to batch_size with similar lengths (sorted by length,
// then cut). With shuffle_seed >= 0 the batch order is shuffled with that seed; without, batches
// come in length order. Each batch lists its examples longest first, as packing requires.
std::vector<std::vector<int64_t>> length_grouped_batches(const std::vector<int64_t>& lengths, int64_t batch_size,
                                                         int64_t shuffle_seed);

struct PackedBatch {
  torch::Tensor values;       // [N] the sequences' values in packed (time-major) order
  torch::Tensor batch_sizes;  // [T_max] int64 on the CPU: sequences still running at each time step
  // rows[b][t]: the position in `values` of sequence b's t-th element (b in the order given).
  std::vector<std::vector<int64_t>> rows;
  int64_t tokens() const { return values.size(0); }
};

// Packs sequences given longest first (checked); every sequence must be non-empty.
PackedBatch pack_sequences(const std::vector<const std::vector<int64_t>*>& sequences);

}  // namespace moelab
