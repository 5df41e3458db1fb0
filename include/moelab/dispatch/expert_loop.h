// A loop over the experts of a grouped product, optionally split over the cores.
//
// Shape legend: E experts.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace moelab {

// Where each expert's block starts, plus the total at the end: E + 1 entries.
std::vector<int64_t> block_offsets(const std::vector<int64_t>& rows_per_expert);

using ExpertWork = std::function<void(int64_t expert, int64_t offset, int64_t rows)>;

// Runs work(e, offset_e, rows_e) once for every expert e, offset_e being where its block of rows
// starts. `parallel` hands each of at::get_num_threads() threads a contiguous run of experts holding
// about the same number of rows (an expert without rows counts as one, for the zeroing some work
// does); a BLAS called inside runs on one thread. Which thread computes an expert never changes its
// numbers, so the result is the same serial or parallel.
void for_each_expert(const std::vector<int64_t>& rows_per_expert, bool parallel, const ExpertWork& work);

}  // namespace moelab
