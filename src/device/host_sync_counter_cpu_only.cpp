// HostSyncCounter of a CPU-only build: there is no device to wait for.
// (src/cuda/host_sync_counter.cpp replaces this file in a CUDA build; CMakeLists.txt picks one.)
#include "moelab/device/host_sync_counter.h"

namespace moelab {

struct HostSyncCounter::State {};

HostSyncCounter::HostSyncCounter() : state_(std::make_unique<State>()) {}
HostSyncCounter::~HostSyncCounter() = default;
int64_t HostSyncCounter::count() const { return 0; }
bool HostSyncCounter::available() { return false; }

}  // namespace moelab
