// Counts the times the host waits for the GPU (a copy to the host, `.item()`, a stream wait) while
// an instance lives, as CUDA's sync debug mode reports them: the check that an MoE forward waits
// once, for its per-expert counts (issue 20). Without CUDA there is nothing to wait for and nothing
// is counted. One instance at a time; it replaces the calling thread's LibTorch warning handler
// while it lives and passes every other warning on, so it counts the waits of that thread (and of
// the autograd engine's, whose warnings reach the thread that called backward).
#pragma once
#include <cstdint>
#include <memory>

namespace moelab {

class HostSyncCounter {
 public:
  HostSyncCounter();
  ~HostSyncCounter();
  HostSyncCounter(const HostSyncCounter&) = delete;
  HostSyncCounter& operator=(const HostSyncCounter&) = delete;

  int64_t count() const;
  // Whether this build can count (it was compiled against a LibTorch with CUDA).
  static bool available();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace moelab
