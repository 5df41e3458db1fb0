// Measured grouped-path choices saved for later processes.
//
// kAuto times the candidate kernels on the first product of each shape class. The candidates round
// differently, and timings jitter, so two processes measuring on their own may pick different paths
// and produce different losses from the same config and seed. With a cache, the first process on a
// machine measures and saves; every later one (and every concurrent one, which waits on the cache's
// lock) uses the saved choice, so runs repeat bit for bit.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "moelab/dispatch/grouped_path.h"

namespace moelab {

// The cache file, or "" for none (each process measures for itself, the default of the library).
void set_grouped_path_cache(const std::string& file);
std::string grouped_path_cache();
// $MOELAB_CACHE_DIR/grouped_paths.json, else $XDG_CACHE_HOME/moelab/..., else $HOME/.cache/moelab/...
std::string default_grouped_path_cache();

// What a saved choice holds for: the CPU model (or GPU), intra-op threads and the LibTorch build.
// Choices of other machines in the same file are kept and ignored.
std::string grouped_path_machine(int device_type);

// The choice for `shape`: the saved one when the cache has it, it is one of `candidates` and its saved
// measurement timed all of them (a choice made before a candidate existed is measured again), else
// measure()'s, which is then saved. The lookup, the measurement and the save happen under an
// exclusive lock of the cache, so processes started together agree. A cache that cannot be read,
// parsed or written costs a one-line warning and falls back to measuring; it never stops a run.
GroupedChoice saved_or_measured_choice(const GroupedShape& shape, const std::function<GroupedChoice()>& measure,
                                       const std::vector<GroupedPath>& candidates);

}  // namespace moelab
