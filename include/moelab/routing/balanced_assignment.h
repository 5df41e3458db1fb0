// Balanced assignment of N tokens to E experts (BASE layers, Lewis et al. 2021): every expert
// receives the same number of tokens (N / E; the first N mod E experts one more), and the total
// affinity sum_n a[n, expert(n)] is maximal up to a tolerance.
//
// Method: Bertsekas' auction algorithm for an assignment problem with similar objects, each expert
// being `capacity` identical seats. Tokens bid for the cheapest seat of their best expert, raising
// its price by their margin over the next best option plus epsilon; an outbid token bids again.
// With epsilon-scaling (epsilon shrinks 8x per phase, prices are kept) the result is within
// N * final_epsilon of the optimum, and final_epsilon = 1e-6 x (affinity range) by default.
#pragma once
#include <torch/types.h>

#include <vector>

namespace moelab {

// affinity: [N, E] (any floating dtype, any device; read on the CPU as double). Returns [N] int64
// expert ids on the CPU. relative_tolerance (> 0): final epsilon as a fraction of the affinity
// range. When E does not divide N, which experts get the spare seats is drawn from torch's RNG.
// Throws moelab::Error for NaN or infinite affinities.
torch::Tensor balanced_assignment(const torch::Tensor& affinity, double relative_tolerance = 1e-6);

// Seats per expert for N tokens over E experts: N / E each, and one more for the N mod E experts
// starting at first_extra (cyclically).
std::vector<int64_t> balanced_capacities(int64_t num_tokens, int64_t num_experts, int64_t first_extra = 0);

}  // namespace moelab
