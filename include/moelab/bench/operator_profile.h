// Where a step's host time goes, operator by operator: LibTorch's (legacy, host-side) profiler run
// around some work, its trace folded into a table of calls, total and self time per operator. On a
// GPU the host only queues kernels, so long operators are the ones that wait for the device (a copy
// to the host, `.item()`, a synchronisation the caller records as an operator), and time outside
// every operator is host code that calls no LibTorch operator (moelab's own, or a kernel library
// called directly).
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace moelab {

struct OperatorTime {
  std::string name;
  double calls = 0;     // per repeat
  double total_ms = 0;  // per repeat, nested operators included
  double self_ms = 0;   // per repeat, nested operators excluded
};

struct OperatorProfile {
  std::vector<OperatorTime> operators;  // largest self time first
  double wall_ms = 0;                   // the work, per repeat
  double top_level_ms = 0;              // operators not nested in another, all threads, per repeat
  double leaf_calls = 0;                // per repeat, calls that call no other operator: on a GPU every
                                        // kernel is launched from one of these (views launch none)
};

// Folds a Chrome trace (a JSON list of complete events: name, ts, dur in microseconds, tid) of
// `repeats` runs of some work lasting `wall_ms` in all. An event nested in another on its thread
// counts in its parent's total but not in the parent's self time.
OperatorProfile summarize_operator_trace(const std::string& trace_json, int repeats, double wall_ms);

// Runs `work` `repeats` times under LibTorch's profiler and summarizes what it recorded.
OperatorProfile profile_operators(const std::function<void()>& work, int repeats);

// The `rows` operators of most self time as a markdown table, with the wall and top-level figures.
std::string operator_profile_markdown(const OperatorProfile& profile, size_t rows);

// Appends "## heading" and that table (20 rows) to the markdown file at `path` (`bench --profile`);
// moelab::Error when it cannot be written.
void append_operator_profile(const std::string& path, const std::string& heading, const OperatorProfile& profile);

}  // namespace moelab
