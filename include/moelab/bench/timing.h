// Measuring for `moelab bench`: warm-up, then the median of repeated samples; pairs of functions are
// sampled alternately so a ratio between them is not skewed by the machine's load drifting.
#pragma once
#include <functional>
#include <vector>

namespace moelab {

struct TimingOptions {
  int warmup = 2;    // untimed calls first (first-touch allocation, kAuto path measurement)
  int samples = 10;  // timed calls; the median is reported
};

// Milliseconds of each timed call of fn(), after the warm-up calls.
std::vector<double> sampled_ms(const std::function<void()>& fn, const TimingOptions& options);
// The median of `values` (the mean of the middle two for an even count); values must not be empty.
double median(std::vector<double> values);
// Median milliseconds of fn().
double median_ms(const std::function<void()>& fn, const TimingOptions& options);

// Median milliseconds of each function, sampled in turn (one sample of each per round).
std::vector<double> interleaved_median_ms(const std::vector<std::function<void()>>& fns, const TimingOptions& options);

// Current resident set size in MiB (/proc/self/statm).
double current_rss_mb();

// GFLOP/s of a square sgemm of this size, measured now on the current threads.
double sgemm_gflops(int64_t size, const TimingOptions& options);

// GB/s of a large float32 copy (bytes read + bytes written per second) on the current threads: the
// memory speed a memory-bound kernel can hope for.
double copy_bandwidth_gbs(const TimingOptions& options);

}  // namespace moelab
