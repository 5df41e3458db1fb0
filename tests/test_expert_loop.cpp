// The expert loop visits every expert once with its block, and, asked to, really uses the cores:
// moelab's files call LibTorch's inline parallel_for, which is serial unless they are compiled with
// OpenMP (they were not, until 2026-12-04: the parallel paths ran on one thread).
#include <gtest/gtest.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <mutex>
#include <set>
#include <vector>

#include "moelab/dispatch/expert_loop.h"

using namespace moelab;

TEST(ExpertLoop, VisitsEveryExpertOnceWithItsBlock) {
  const std::vector<int64_t> rows = {3, 0, 5, 1, 0, 7, 2};
  for (const bool parallel : {false, true}) {
    std::mutex mutex;
    std::vector<int> visits(rows.size(), 0);
    std::vector<int64_t> offsets(rows.size(), -1);
    for_each_expert(rows, parallel, [&](int64_t e, int64_t offset, int64_t n) {
      std::lock_guard<std::mutex> lock(mutex);
      ++visits[e];
      offsets[e] = offset;
      EXPECT_EQ(n, rows[e]);
    });
    int64_t expected_offset = 0;
    for (size_t e = 0; e < rows.size(); ++e) {
      EXPECT_EQ(visits[e], 1) << "expert " << e;
      EXPECT_EQ(offsets[e], expected_offset) << "expert " << e;
      expected_offset += rows[e];
    }
  }
}

TEST(ExpertLoop, ParallelLoopRunsOnEveryThread) {
  const int threads_before = at::get_num_threads();
  at::set_num_threads(2);
  std::mutex mutex;
  std::set<int> thread_numbers;
  bool grad_mode_seen = false;
  {
    // The workers see the caller's grad mode (off inside an autograd function's forward).
    const torch::NoGradGuard no_grad;
    for_each_expert(std::vector<int64_t>(8, 4), /*parallel=*/true, [&](int64_t, int64_t, int64_t) {
      std::lock_guard<std::mutex> lock(mutex);
      thread_numbers.insert(at::get_thread_num());
      grad_mode_seen = grad_mode_seen || torch::GradMode::is_enabled();
    });
  }
  EXPECT_EQ(thread_numbers, (std::set<int>{0, 1}));
  EXPECT_FALSE(grad_mode_seen);
  at::set_num_threads(threads_before);
}
