// HostSyncCounter of a CUDA build: sync debug mode makes LibTorch warn at every synchronising call
// (c10::cuda::memcpy_and_sync, stream_synchronize); a warning handler counts those warnings.
#include "moelab/device/host_sync_counter.h"

#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>

#include <string>

namespace moelab {

namespace {

class CountingHandler : public c10::WarningHandler {
 public:
  explicit CountingHandler(c10::WarningHandler* next) : next_(next) {}
  void process(const c10::Warning& warning) override {
    if (warning.msg().find("synchronizing CUDA operation") != std::string::npos) {
      ++count;
    } else if (next_ != nullptr) {
      next_->process(warning);
    }
  }
  int64_t count = 0;

 private:
  c10::WarningHandler* next_;
};

}  // namespace

struct HostSyncCounter::State {
  State()
      : handler(c10::WarningUtils::get_warning_handler()),
        guard(&handler),
        previous_mode(c10::cuda::warning_state().get_sync_debug_mode()) {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
  }
  ~State() { c10::cuda::warning_state().set_sync_debug_mode(previous_mode); }
  CountingHandler handler;
  c10::WarningUtils::WarningHandlerGuard guard;
  c10::cuda::SyncDebugMode previous_mode;
};

HostSyncCounter::HostSyncCounter() : state_(std::make_unique<State>()) {}
HostSyncCounter::~HostSyncCounter() = default;
int64_t HostSyncCounter::count() const { return state_->handler.count; }
bool HostSyncCounter::available() { return true; }

}  // namespace moelab
