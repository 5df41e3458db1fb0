#include "moelab/bench/operator_profile.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/profiler_legacy.h>

#include "moelab/util/error.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <sstream>

namespace moelab {

namespace {

struct TraceEvent {
  std::string name;
  double start_us = 0;
  double duration_us = 0;
  double child_us = 0;  // time of the events nested directly in this one
  bool leaf = true;     // no event nested in this one
};

}  // namespace

OperatorProfile summarize_operator_trace(const std::string& trace_json, int repeats, double wall_ms) {
  const auto trace = nlohmann::json::parse(trace_json, nullptr, /*allow_exceptions=*/false);
  if (!trace.is_array()) fail("operator profile: the profiler's trace is not a JSON list of events");
  std::map<std::string, std::vector<TraceEvent>> by_thread;
  for (const auto& event : trace) {
    if (!event.is_object() || event.value("ph", "") != "X" || !event.contains("ts") || !event.contains("dur")) continue;
    by_thread[event.contains("tid") ? event["tid"].dump() : ""].push_back(
        {event.value("name", "?"), event["ts"].get<double>(), event["dur"].get<double>(), 0.0, true});
  }
  OperatorProfile profile;
  std::map<std::string, OperatorTime> by_name;
  for (auto& [thread, events] : by_thread) {
    // Parents before their children: earlier start first, the longer event first at equal starts.
    std::sort(events.begin(), events.end(), [](const TraceEvent& a, const TraceEvent& b) {
      return a.start_us != b.start_us ? a.start_us < b.start_us : a.duration_us > b.duration_us;
    });
    std::vector<size_t> open;  // indices of the events enclosing the current one, innermost last
    for (size_t i = 0; i < events.size(); ++i) {
      const auto& event = events[i];
      while (!open.empty() && events[open.back()].start_us + events[open.back()].duration_us <= event.start_us) open.pop_back();
      if (open.empty())
        profile.top_level_ms += event.duration_us / 1e3;
      else {
        events[open.back()].child_us += event.duration_us;
        events[open.back()].leaf = false;
      }
      open.push_back(i);
    }
    for (const auto& event : events) {
      if (event.leaf) profile.leaf_calls += 1;
      auto& entry = by_name[event.name];
      entry.name = event.name;
      entry.calls += 1;
      entry.total_ms += event.duration_us / 1e3;
      entry.self_ms += std::max(0.0, event.duration_us - event.child_us) / 1e3;
    }
  }
  const double per_repeat = 1.0 / std::max(1, repeats);
  for (auto& [name, entry] : by_name) {
    entry.calls *= per_repeat;
    entry.total_ms *= per_repeat;
    entry.self_ms *= per_repeat;
    profile.operators.push_back(entry);
  }
  std::sort(profile.operators.begin(), profile.operators.end(),
            [](const OperatorTime& a, const OperatorTime& b) { return a.self_ms > b.self_ms; });
  profile.top_level_ms *= per_repeat;
  profile.leaf_calls *= per_repeat;
  profile.wall_ms = wall_ms * per_repeat;
  return profile;
}

OperatorProfile profile_operators(const std::function<void()>& work, int repeats) {
  std::ostringstream trace;
  double wall_ms = 0;
  {
    torch::autograd::profiler::RecordProfile guard(trace);
    const auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < repeats; ++r) work();
    wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  }  // the guard writes the trace when it ends
  return summarize_operator_trace(trace.str(), repeats, wall_ms);
}

std::string operator_profile_markdown(const OperatorProfile& profile, size_t rows) {
  // On a GPU the host queues every kernel from a leaf call: their count, times the host's cost per
  // call, bounds how fast a pass can be however small its kernels.
  double calls = 0;
  for (const auto& op : profile.operators) calls += op.calls;
  std::string out = fmt::format(
      "wall {:.3f} ms per run; {:g} operator calls, {:g} of them calling no other; operators not nested in "
      "another {:.3f} ms (all threads); outside every operator about {:.3f} ms\n\n"
      "| operator | calls | self ms | total ms |\n|---|---:|---:|---:|\n",
      profile.wall_ms, calls, profile.leaf_calls, profile.top_level_ms,
      std::max(0.0, profile.wall_ms - profile.top_level_ms));
  for (size_t i = 0; i < std::min(rows, profile.operators.size()); ++i) {
    const auto& op = profile.operators[i];
    out += fmt::format("| {} | {:g} | {:.3f} | {:.3f} |\n", op.name, op.calls, op.self_ms, op.total_ms);
  }
  return out;
}

void append_operator_profile(const std::string& path, const std::string& heading, const OperatorProfile& profile) {
  std::ofstream out(path, std::ios::app);
  out << "\n## " << heading << "\n\n" << operator_profile_markdown(profile, /*rows=*/20);
  if (!out) fail("bench --profile: cannot write {}", path);
}

}  // namespace moelab
