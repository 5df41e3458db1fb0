#include "moelab/bench/timing.h"

#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <vector>

#include "moelab/util/error.h"

namespace moelab {

namespace {

double elapsed_ms(const std::function<void()>& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

void check_options(const TimingOptions& options) {
  if (options.samples < 1) fail("bench: samples must be >= 1, got {}", options.samples);
  if (options.warmup < 0) fail("bench: warm-up must be >= 0, got {}", options.warmup);
}

}  // namespace

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

std::vector<double> sampled_ms(const std::function<void()>& fn, const TimingOptions& options) {
  check_options(options);
  for (int i = 0; i < options.warmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < options.samples; ++i) ms.push_back(elapsed_ms(fn));
  return ms;
}

double median_ms(const std::function<void()>& fn, const TimingOptions& options) {
  return median(sampled_ms(fn, options));
}

std::vector<double> interleaved_median_ms(const std::vector<std::function<void()>>& fns, const TimingOptions& options) {
  check_options(options);
  for (int i = 0; i < options.warmup; ++i)
    for (const auto& fn : fns) fn();
  std::vector<std::vector<double>> ms(fns.size());
  for (int i = 0; i < options.samples; ++i)
    for (size_t f = 0; f < fns.size(); ++f) ms[f].push_back(elapsed_ms(fns[f]));
  std::vector<double> medians;
  for (const auto& samples : ms) medians.push_back(median(samples));
  return medians;
}

double current_rss_mb() {
  std::ifstream statm("/proc/self/statm");
  long pages_total = 0, pages_resident = 0;
  statm >> pages_total >> pages_resident;
  return static_cast<double>(pages_resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

double sgemm_gflops(int64_t size, const TimingOptions& options) {
  torch::NoGradGuard no_grad;
  const auto a = torch::randn({size, size}), b = torch::randn({size, size});
  auto c = torch::empty({size, size});
  const double ms = median_ms([&] { at::mm_out(c, a, b); }, options);
  return 2.0 * static_cast<double>(size) * size * size / (ms * 1e6);
}

double copy_bandwidth_gbs(const TimingOptions& options) {
  torch::NoGradGuard no_grad;
  // 256 MB each way: far past every cache level.
  const auto source = torch::ones({64 * 1024 * 1024});
  auto target = torch::empty_like(source);
  const double ms = median_ms([&] { target.copy_(source); }, options);
  return 2.0 * static_cast<double>(source.numel()) * sizeof(float) / (ms * 1e6);
}

}  // namespace moelab
