#include "moelab/dispatch/expert_loop.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>

namespace moelab {

std::vector<int64_t> block_offsets(const std::vector<int64_t>& rows_per_expert) {
  std::vector<int64_t> offsets(rows_per_expert.size() + 1, 0);
  for (size_t e = 0; e < rows_per_expert.size(); ++e) offsets[e + 1] = offsets[e] + rows_per_expert[e];
  return offsets;
}

void for_each_expert(const std::vector<int64_t>& rows_per_expert, bool parallel, const ExpertWork& work) {
  const int64_t experts = static_cast<int64_t>(rows_per_expert.size());
  const auto offsets = block_offsets(rows_per_expert);
  const int64_t threads = parallel ? std::min<int64_t>(at::get_num_threads(), experts) : 1;
  if (threads <= 1) {
    for (int64_t e = 0; e < experts; ++e) work(e, offsets[e], rows_per_expert[e]);
    return;
  }
  std::vector<int64_t> cost(experts + 1, 0);  // running cost, as offsets but empty experts count 1
  for (int64_t e = 0; e < experts; ++e) cost[e + 1] = cost[e] + std::max<int64_t>(1, rows_per_expert[e]);
  std::vector<int64_t> first(threads + 1, experts);
  first[0] = 0;
  for (int64_t t = 1; t < threads; ++t)
    first[t] = std::lower_bound(cost.begin(), cost.end(), cost[experts] * t / threads) - cost.begin();
  // One chunk per thread (grain 1). This file must be compiled with OpenMP: LibTorch's parallel_for
  // is inline and runs serially otherwise (CMakeLists.txt links OpenMP::OpenMP_CXX).
  // The workers take the caller's thread-local state (grad mode above all: inside an autograd
  // function's forward it is off, and an out= product on a parameter refuses to run with it on).
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard state(caller_state);
    for (int64_t t = begin; t < end; ++t)
      for (int64_t e = first[t]; e < std::max(first[t], first[t + 1]); ++e) work(e, offsets[e], rows_per_expert[e]);
  });
}

}  // namespace moelab
